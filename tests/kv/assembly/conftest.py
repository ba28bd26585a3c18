"""Assembly-mode fixtures: the tiny Llama, a tiny Qwen2 (QKV bias) and a tiny Gemma 3 (local
sliding-window layers shorter than a passage, QK-norm, sandwich norms), fp32."""

from __future__ import annotations

import pytest

from tests.support.tiny import make_tiny_gemma3, make_tiny_llama, make_tiny_qwen2


@pytest.fixture(scope="session", params=["llama", "qwen2", "gemma3"])
def reader(request, tokenizer):
    """A tiny fp32 model of each family the assembly modes claim (Qwen2 has QKV bias; Gemma 3's
    window of 6 positions is shorter than every passage)."""
    make = {"llama": make_tiny_llama, "qwen2": make_tiny_qwen2, "gemma3": make_tiny_gemma3}
    return make[request.param](len(tokenizer), seed=3)
