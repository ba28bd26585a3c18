"""Fixtures for the LlamaIndex LLM tests: a tiny seeded Llama behind a real Generator, and a
real ``BaseEmbedding`` over the packaged MiniLM."""

from __future__ import annotations

import os

import pytest

from ragcompress.generate import Generator
from tests.support.llamaindex_embed import MiniLMEmbedding

# No model hub here: the packaged models load from local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embed_model() -> MiniLMEmbedding:
    return MiniLMEmbedding()


@pytest.fixture(scope="module")
def generator() -> Generator:
    """The packaged reader's tokenizer (and chat template) over a tiny random Llama: answers
    depend on the whole prompt, so a lost turn or chunk shows up in the text."""
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tok = load_tokenizer()
    return Generator.from_model(
        make_tiny_llama(len(tok), seed=0, initializer_range=0.2), tok, max_new_tokens=8
    )
