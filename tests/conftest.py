"""Shared fixtures: a tiny seeded Llama (built from a config, random weights) that uses the
packaged SmolLM2 tokenizer, so tests exercise real tokenization in seconds."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    from ragcompress.models import load_tokenizer

    return load_tokenizer()


def make_tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    """A 2-layer Llama with GQA and llama3 RoPE scaling; fp32, eval mode, fixed seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return make_tiny_llama(len(tokenizer))
