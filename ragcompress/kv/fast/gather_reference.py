"""The gather in torch ops: the reference :mod:`ragcompress.kv.fast._gather` is tested
against, and the path wherever that kernel does not run (CPU, no Triton, partial rotary or a
head_dim that is not a power of two).

Keys are re-rotated by :func:`ragcompress.models.rope.rotate_by` (fp32, channels past the
rotary width pass through) with the cos/sin of each entry's delta in each destination layer's
table (one table for all layers, or one per layer type: Gemma 3); quantized entries are
dequantized in fp32 first (:mod:`ragcompress.kv.kernels.quant_format`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.rows import GatherRows
    from ragcompress.kv.fast.tables import Rotaries

__all__ = ["gather_reference"]


def gather_reference(rows: GatherRows, rotary: Rotaries) -> None:
    """Write every entry of ``rows`` into its buffer's context, as the kernel does."""
    import torch

    from ragcompress.kv.fast.tables import layer_freqs
    from ragcompress.kv.kernels.quant_format import dequantize_keys, dequantize_values
    from ragcompress.models.rope import cos_sin, rotate_by

    buffer = rows.buffer
    d, kvh, nl = buffer.head_dim, buffer.kv_heads, buffer.layers
    dev = buffer.ctx_keys.device
    freqs = layer_freqs(rotary, nl, dev)  # (layers, rot_dim // 2)

    def angles(delta: int) -> tuple[torch.Tensor, torch.Tensor]:  # (layers, rot_dim) each
        return cos_sin(torch.tensor([delta], device=dev), freqs.unsqueeze(1))  # type: ignore[return-value]

    flat_k, flat_v = buffer.ctx_keys.view(-1, d), buffer.ctx_values.view(-1, d)
    for r in rows.all_dense():
        cos, sin = (t[:, 0] for t in angles(r.delta))
        i = torch.arange(r.rows, device=dev)
        dst = r.dst_row + (i % r.run) * r.stride + torch.div(i, r.run, rounding_mode="floor")
        layer = torch.div(dst, kvh, rounding_mode="floor") % nl  # each row's destination layer
        flat_k.index_copy_(0, dst, rotate_by(r.keys.float(), cos[layer], sin[layer]).to(flat_k.dtype))
        flat_v.index_copy_(0, dst, r.values.to(flat_v.dtype))
    stacked = nl * kvh
    heads_k = buffer.ctx_keys.view(-1, stacked, d)  # (capacity, layers * kv_heads, d)
    heads_v = buffer.ctx_values.view(-1, stacked, d)
    for q in rows.quantized:
        kv = q.kv
        cos, sin = angles(q.delta)
        layer = torch.div(
            torch.arange(q.head0, q.head0 + kv.kv_heads, device=dev), kvh, rounding_mode="floor"
        )
        keys = dequantize_keys(kv.key_codes, kv.key_scale, kv.key_zero, kv.bits, kv.group)
        values = dequantize_values(kv.value_codes, kv.value_scale, kv.value_zero, kv.bits, kv.group)
        tokens, heads = slice(q.slot, q.slot + kv.num_tokens), slice(q.head0, q.head0 + kv.kv_heads)
        heads_k[tokens, heads] = rotate_by(keys, cos[layer], sin[layer]).transpose(0, 1).to(heads_k.dtype)
        heads_v[tokens, heads] = values.transpose(0, 1).to(heads_v.dtype)
