"""CPU: the torch reference of the assembly kernel against fp64 RoPE via HF's own
``apply_rotary_pos_emb`` (llama3-scaled frequencies), and the quantization format."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ragcompress.kv.kernels import QuantizedKV, rerotate, write_dense_reference, write_quantized_reference
from ragcompress.kv.kernels.quant_format import (
    dequantize_keys,
    dequantize_values,
    pack_int4,
    quantize_keys,
    quantize_values,
    unpack_int4,
)

from .kernel_cases import inv_freq as llama3_inv_freq


def inv_freq(d: int) -> torch.Tensor:
    """The llama3-scaled inverse frequencies transformers itself computes."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    cfg = LlamaConfig(hidden_size=d * 4, num_attention_heads=4, rope_parameters=rope)
    return ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")[0].float()


def test_kernel_cases_use_the_same_llama3_frequencies():
    for d in (16, 64, 128):
        torch.testing.assert_close(llama3_inv_freq(d), inv_freq(d))


def hf_rope(x: torch.Tensor, pos: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """fp64 HF RoPE of x (h, n, d) at positions (h, n)."""
    ang = pos.double()[..., None] * freq.double()
    emb = torch.cat((ang, ang), dim=-1)
    _, k = apply_rotary_pos_emb(x.double(), x.double(), emb.cos(), emb.sin(), unsqueeze_dim=0)
    return k[0]  # apply_rotary_pos_emb unsqueezes cos/sin at dim 0: (1, h, n, d)


@pytest.mark.parametrize("d", [16, 64, 128])
def test_rerotation_matches_fp64_rope_at_the_new_positions(d):
    g = torch.Generator().manual_seed(d)
    freq = inv_freq(d)
    x = torch.randn(2, 50, d, generator=g, dtype=torch.float64)  # pre-RoPE keys
    pos = torch.randint(0, 3000, (2, 50), generator=g)
    delta = torch.randint(-pos.min().item(), 4000, (2, 50), generator=g)
    stored = hf_rope(x, pos, freq).float()
    got = rerotate(stored, delta, freq)
    want = hf_rope(x, pos + delta, freq)
    torch.testing.assert_close(got.double(), want, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("dst_dtype", [torch.float32, torch.bfloat16])
def test_dense_write_fills_exactly_its_slice(dst_dtype):
    g = torch.Generator().manual_seed(1)
    freq = inv_freq(16)
    x = torch.randn(2, 10, 16, generator=g, dtype=torch.float64)
    pos = torch.arange(5, 15)[None].expand(2, -1)
    keys, values = hf_rope(x, pos, freq).float(), torch.randn(2, 10, 16, generator=g)
    dk = torch.full((1, 2, 40, 16), float("nan"), dtype=dst_dtype)
    dv = dk.clone()
    write_dense_reference(keys, values, dk, dv, 20, torch.tensor(100), freq)
    want = hf_rope(x, pos + 100, freq)
    tol = 1e-4 if dst_dtype == torch.float32 else 2.0**-7
    torch.testing.assert_close(dk[0, :, 20:30].double(), want, atol=tol * 4, rtol=tol)
    torch.testing.assert_close(dv[0, :, 20:30].float(), values.to(dst_dtype).float())
    assert bool(dk[0, :, :20].isnan().all()) and bool(dk[0, :, 30:].isnan().all())
    assert bool(dv[0, :, :20].isnan().all()) and bool(dv[0, :, 30:].isnan().all())


def test_quantized_write_is_dequantize_then_rotate():
    g = torch.Generator().manual_seed(2)
    freq = inv_freq(64)
    keys, values = torch.randn(2, 33, 64, generator=g), torch.randn(2, 33, 64, generator=g)
    src = QuantizedKV(*quantize_keys(keys, 4, 16), *quantize_values(values, 4, 16), bits=4, group=16)
    dk, dv = torch.zeros(1, 2, 40, 64), torch.zeros(1, 2, 40, 64)
    delta = torch.arange(33)[None].expand(2, -1)  # per-token deltas
    write_quantized_reference(src, dk, dv, 7, delta, freq)
    kd = dequantize_keys(src.key_codes, src.key_scale, src.key_zero, 4, 16)
    vd = dequantize_values(src.value_codes, src.value_scale, src.value_zero, 4, 16)
    assert torch.equal(dk[0, :, 7:40], rerotate(kd, delta, freq))
    assert torch.equal(dv[0, :, 7:40], vd)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [1, 7, 32])
def test_quantization_error_within_half_a_step_per_group(bits, group):
    g = torch.Generator().manual_seed(bits * 100 + group)
    x = torch.randn(2, 45, 16, generator=g) * torch.linspace(0.1, 8, 16)
    for quant, dequant, axis in (
        (quantize_keys, dequantize_keys, 1),
        (quantize_values, dequantize_values, 2),
    ):
        codes, scale, zero = quant(x, bits, group)
        assert codes.dtype == torch.uint8 and scale.dtype == zero.dtype == torch.float16
        assert codes.shape[-1] == (8 if bits == 4 else 16)
        y = dequant(codes, scale, zero, bits, group)
        step = scale.float().repeat_interleave(group, dim=axis).narrow(axis, 0, x.shape[axis])
        fp16_slack = 2.0**-10 * x.abs() + 1e-6
        assert bool(((x - y).abs() <= 0.5 * step * 1.002 + fp16_slack + 1e-3 * step * (2**bits)).all())


def test_int4_packing_pairs_rotation_halves_in_one_byte():
    codes = torch.randint(0, 16, (3, 5, 8), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (3, 5, 4)
    assert torch.equal(packed & 0xF, codes[..., :4]) and torch.equal(packed >> 4, codes[..., 4:])
    assert torch.equal(unpack_int4(packed), codes)


def test_constant_groups_dequantize_exactly():
    x = torch.full((1, 8, 4), 0.75)
    codes, scale, zero = quantize_keys(x, 4, 4)
    assert torch.equal(dequantize_keys(codes, scale, zero, 4, 4), x)


def test_bad_writes_are_refused():
    freq = inv_freq(16)
    k = torch.zeros(2, 10, 16)
    with pytest.raises(ValueError, match="overflows"):
        write_dense_reference(
            k, k, torch.zeros(1, 2, 12, 16), torch.zeros(1, 2, 12, 16), 5, torch.tensor(0), freq
        )
    with pytest.raises(ValueError, match="kv_heads"):
        write_dense_reference(
            k, k, torch.zeros(1, 3, 12, 16), torch.zeros(1, 3, 12, 16), 0, torch.tensor(0), freq
        )
    with pytest.raises(ValueError, match="integer"):
        write_dense_reference(
            k, k, torch.zeros(1, 2, 12, 16), torch.zeros(1, 2, 12, 16), 0, torch.tensor(0.5), freq
        )
    with pytest.raises(ValueError, match="non-finite"):
        quantize_keys(torch.tensor([[[float("inf"), 0.0]]]), 4, 2)
