"""Assembly-mode fixtures: the tiny Llama and a tiny Qwen2 (QKV bias), fp32."""

from __future__ import annotations

import pytest

from tests.support.tiny import make_tiny_llama, make_tiny_qwen2


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def reader(request, tokenizer):
    """A tiny fp32 model of each family we claim (Qwen2 has QKV bias)."""
    if request.param == "llama":
        return make_tiny_llama(len(tokenizer), seed=3)
    return make_tiny_qwen2(len(tokenizer), seed=3)
