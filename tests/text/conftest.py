"""Fixtures for the text compressors: the real MiniLM embedder (small) and tiny seeded LMs."""

from __future__ import annotations

import pytest

from tests.support.tiny import make_tiny_llama


@pytest.fixture(scope="session")
def embedder():
    from ragcompress.models.load import load_embedder

    return load_embedder(device="cpu")


@pytest.fixture(scope="session")
def talkative_llama(tokenizer):
    """A tiny Llama with untied embeddings: a tied random model just repeats the last prompt
    token (a newline after a chat template), an untied one emits varied tokens."""
    return make_tiny_llama(len(tokenizer), seed=1, tie_word_embeddings=False)
