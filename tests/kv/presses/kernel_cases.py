"""Shared random inputs and checks for the assembly kernel tests (CPU reference, Triton
interpreter and CUDA)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ragcompress.kv.kernels import QuantizedKV
from ragcompress.kv.kernels.quant_format import quantize_keys, quantize_values
from ragcompress.models.arch import RopeSpec

# (kv_heads, n, head_dim, bits, group, source dtype, destination dtype, one delta for all tokens)
SHAPES = [
    (2, 37, 16, 4, 8, torch.float32, torch.float32, False),
    (2, 37, 16, 4, 8, torch.float32, torch.float32, True),
    (2, 1, 16, 8, 32, torch.float32, torch.bfloat16, False),
    (3, 130, 64, 4, 32, torch.bfloat16, torch.bfloat16, True),
    (2, 77, 64, 8, 20, torch.float16, torch.float16, False),
    (1, 300, 128, 0, 1, torch.bfloat16, torch.bfloat16, True),
    (2, 65, 64, 0, 1, torch.float32, torch.float16, False),
]


def inv_freq(head_dim: int) -> torch.Tensor:
    """llama3-scaled inverse frequencies (theta 5e5, factor 8, original context 256), the table
    the model-family adapter gives the kernels (test_kernel_reference checks it against
    transformers' own)."""
    spec = RopeSpec(
        "llama3",
        500000.0,
        head_dim,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_positions=256,
    )
    return spec.inv_freq().clone()


def make_inputs(shape: tuple[Any, ...], device: str, seed: int) -> dict[str, Any]:
    h, n, d, bits, group, src_dt, dst_dt, uniform = shape
    g = torch.Generator().manual_seed(seed)
    keys = (torch.randn(h, n, d, generator=g) * 3).to(src_dt)
    values = torch.randn(h, n, d, generator=g).to(src_dt)
    delta = torch.randint(-50, 5000, () if uniform else (h, n), generator=g)
    src: Any
    if bits:
        src = QuantizedKV(
            *quantize_keys(keys, bits, group), *quantize_values(values, bits, group), bits=bits, group=group
        )
        src = QuantizedKV(*(t.to(device) for t in list(vars(src).values())[:6]), bits=bits, group=group)
    else:
        src = (keys.to(device), values.to(device))
    max_len, offset = n + 23, 9
    # A destination in the fast path's (capacity, kv_heads, head_dim) layout, seen through a
    # permuted view: the kernel must honour arbitrary strides.
    poison = torch.full((max_len, h, d), float("nan"), dtype=dst_dt, device=device)
    return {
        "src": src,
        "dst_k": poison.clone().permute(1, 0, 2)[None],
        "dst_v": poison.clone().permute(1, 0, 2)[None],
        "offset": offset,
        "delta": delta.to(device),
        "inv_freq": inv_freq(d).to(device),
        "n": n,
    }


def write(fn_dense: Callable[..., None], fn_quant: Callable[..., None], inp: dict[str, Any]) -> None:
    args = (inp["dst_k"], inp["dst_v"], inp["offset"], inp["delta"], inp["inv_freq"])
    if isinstance(inp["src"], QuantizedKV):
        fn_quant(inp["src"], *args)
    else:
        fn_dense(*inp["src"], *args)


def assert_same_writes(got: dict[str, Any], ref: dict[str, Any]) -> None:
    """Written rows agree within one bf16 step (both round fp32 results); others stay poisoned."""
    lo, hi = ref["offset"], ref["offset"] + ref["n"]
    for name in ("dst_k", "dst_v"):
        a, b = got[name][0].float().cpu(), ref[name][0].float().cpu()
        inside = torch.zeros(a.shape[1], dtype=torch.bool)
        inside[lo:hi] = True
        assert bool(torch.isfinite(a[:, inside]).all()), f"{name}: a slot was not written"
        assert bool(torch.isnan(a[:, ~inside]).all()), f"{name}: wrote outside its slice"
        err = (a[:, inside] - b[:, inside]).abs()
        bound = 2.0**-7 * b[:, inside].abs() + 1e-5
        assert bool((err <= bound).all()), f"{name}: max error {float(err.max())}"
