"""Re-rotation: pure RoPE algebra with the tables of the models' family adapters, checked
against the models' own rotary modules."""

from __future__ import annotations

import pytest
import torch

from ragcompress.models.rope import Rotary, rerotate


def test_rotations_compose(rope_llama):
    rot = Rotary.from_model(rope_llama)
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 7, rope_llama.config.head_dim, generator=g)
    for a, b in [(5, 11), (300, -120), (-40, 40), (1000, 2345)]:
        twice = rerotate(rerotate(keys, a, rot), b, rot)
        once = rerotate(keys, a + b, rot)
        # fp32 angles (delta * inv_freq) carry a rounding error of ~6e-8 * |delta| rad, exactly as
        # the model's own RoPE does; the tolerance scales with the positions involved.
        tol = 2e-5 + 1e-7 * (abs(a) + abs(b))
        torch.testing.assert_close(twice, once, atol=tol * keys.abs().max().item(), rtol=0)
    torch.testing.assert_close(rerotate(rerotate(keys, 77, rot), -77, rot), keys, atol=1e-5, rtol=1e-5)
    assert rerotate(keys, 0, rot) is keys


def test_tensor_deltas_match_scalar_deltas(rope_llama):
    rot = Rotary.from_model(rope_llama)
    keys = torch.randn(2, 5, rope_llama.config.head_dim)
    per_token = torch.tensor([3, 3, 3, 3, 3])
    torch.testing.assert_close(rerotate(keys, per_token, rot), rerotate(keys, 3, rot))
    varying = torch.arange(5)
    out = rerotate(keys, varying, rot)
    for i in range(5):
        torch.testing.assert_close(out[:, i], rerotate(keys[:, i : i + 1], i, rot)[:, 0])


def test_bf16_keys_keep_dtype(rope_llama):
    rot = Rotary.from_model(rope_llama)
    keys = torch.randn(2, 4, rope_llama.config.head_dim).to(torch.bfloat16)
    out = rerotate(keys, 9, rot)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), rerotate(keys.float(), 9, rot), atol=2e-2, rtol=2e-2)


def test_layer0_keys_rerotated_equal_keys_encoded_there(rope_llama):
    """Layer-0 keys depend only on the token and its position: a key encoded at p and moved to
    p + d must equal the key a model computes at p + d (checks the scaling is the model's)."""
    attn = rope_llama.model.layers[0].self_attn
    ids = torch.tensor([[5, 17, 99, 4, 250]])
    hidden = rope_llama.model.layers[0].input_layernorm(rope_llama.model.embed_tokens(ids))

    def keys_at(start: int) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        k = attn.k_proj(hidden).view(1, 5, -1, attn.head_dim).transpose(1, 2)
        cos, sin = rope_llama.model.rotary_emb(k, torch.arange(start, start + 5)[None])
        return apply_rotary_pos_emb(k, k, cos, sin)[1][0]

    rot = Rotary.from_model(rope_llama)
    for p, d in [(30, 0), (30, 17), (30, 900), (500, -470)]:
        torch.testing.assert_close(rerotate(keys_at(p), d, rot), keys_at(p + d), atol=1e-4, rtol=1e-4)


def test_cos_sin_equal_the_models_rotary_module(rope_llama):
    """The adapter's table gives the cos/sin the model itself rotates with (default, linear and
    llama3 scaling), so re-rotated keys are the keys the model would have computed."""
    rot = Rotary.from_model(rope_llama)
    assert rot.rot_dim == rope_llama.config.head_dim
    delta = torch.tensor([[0, 1, 17, 900, 4095]])
    cos, sin = rot.cos_sin(delta[0])
    want_cos, want_sin = rope_llama.model.rotary_emb(torch.zeros(1), delta)
    assert torch.equal(cos, want_cos[0]) and torch.equal(sin, want_sin[0])


def test_dynamic_rope_is_refused(tokenizer):
    from tests.support.tiny import make_tiny_llama

    m = make_tiny_llama(
        len(tokenizer), rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    )
    with pytest.raises(ValueError, match=r"RoPE type 'dynamic' is not supported .*'llama3'"):
        Rotary.from_model(m)
