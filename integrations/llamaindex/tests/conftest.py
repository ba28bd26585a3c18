"""Fixtures for the LlamaIndex integration tests: a real ``BaseEmbedding`` over the packaged MiniLM."""

from __future__ import annotations

import os

import pytest

from tests.support.llamaindex_embed import MiniLMEmbedding

# No model hub here: the packaged models load from local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embed_model() -> MiniLMEmbedding:
    return MiniLMEmbedding()
