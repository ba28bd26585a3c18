"""Assembly-mode fixtures: the tiny Llama and a tiny Qwen2 (QKV bias), fp32."""

from __future__ import annotations

import pytest

from ragcompress.testing import make_tiny_llama


def make_tiny_qwen2(vocab_size: int, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=1e6,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    model.requires_grad_(False)
    # Random init leaves the QKV biases at zero; make them count.
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def reader(request, tokenizer):
    """A tiny fp32 model of each family we claim (Qwen2 has QKV bias)."""
    if request.param == "llama":
        return make_tiny_llama(len(tokenizer), seed=3)
    return make_tiny_qwen2(len(tokenizer), seed=3)
