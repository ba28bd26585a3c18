"""Shared fixtures: a tiny seeded Llama (built from a config, random weights) that uses the
packaged SmolLM2 tokenizer, so tests exercise real tokenization in seconds."""

from __future__ import annotations

import os

import pytest

from tests.support.tiny import make_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    """The packaged reader's tokenizer, or a tokenizer folder named by
    ``RAGCOMPRESS_TEST_TOKENIZER`` (the GPU machines have no packaged models)."""
    path = os.environ.get("RAGCOMPRESS_TEST_TOKENIZER")
    if path:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from ragcompress.models.load import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return make_tiny_llama(len(tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> str:
    """A real checkpoint folder (safetensors + config + tokenizer) of the tiny Llama, as a user's
    ``--reader``/``--model`` would be (max 4096 positions)."""
    from tests.support.tiny import make_tiny_llama

    out = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(len(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
