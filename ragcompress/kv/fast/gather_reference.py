"""The gather in torch ops: the reference :mod:`ragcompress.kv.fast._gather` is tested
against, and the path wherever that kernel does not run (CPU, no Triton, partial rotary or a
head_dim that is not a power of two).

Keys are re-rotated by :func:`ragcompress.models.rope.rotate_by` (fp32, channels past the
rotary width pass through) with the model's own cos/sin of each entry's delta; quantized
entries are dequantized in fp32 first (:mod:`ragcompress.kv.kernels.quant_format`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragcompress.kv.fast.rows import GatherRows
    from ragcompress.models.rope import Rotary

__all__ = ["gather_reference"]


def gather_reference(rows: GatherRows, rotary: Rotary) -> None:
    """Write every entry of ``rows`` into its buffer's context, as the kernel does."""
    import torch

    from ragcompress.kv.kernels.quant_format import dequantize_keys, dequantize_values
    from ragcompress.models.rope import rotate_by

    buffer = rows.buffer
    d = buffer.head_dim
    dev = buffer.ctx_keys.device
    flat_k, flat_v = buffer.ctx_keys.view(-1, d), buffer.ctx_values.view(-1, d)
    for r in rows.dense:
        cos, sin = rotary.cos_sin_of(r.delta, dev)
        i = torch.arange(r.rows, device=dev)
        dst = r.dst_row + (i % r.run) * r.stride + torch.div(i, r.run, rounding_mode="floor")
        flat_k.index_copy_(0, dst, rotate_by(r.keys.float(), cos, sin).to(flat_k.dtype))
        flat_v.index_copy_(0, dst, r.values.to(flat_v.dtype))
    stacked = buffer.layers * buffer.kv_heads
    heads_k = buffer.ctx_keys.view(-1, stacked, d)  # (capacity, layers * kv_heads, d)
    heads_v = buffer.ctx_values.view(-1, stacked, d)
    for q in rows.quantized:
        kv = q.kv
        cos, sin = rotary.cos_sin_of(q.delta, dev)
        keys = dequantize_keys(kv.key_codes, kv.key_scale, kv.key_zero, kv.bits, kv.group)
        values = dequantize_values(kv.value_codes, kv.value_scale, kv.value_zero, kv.bits, kv.group)
        tokens, heads = slice(q.slot, q.slot + kv.num_tokens), slice(q.head0, q.head0 + kv.kv_heads)
        heads_k[tokens, heads] = rotate_by(keys, cos, sin).transpose(0, 1).to(heads_k.dtype)
        heads_v[tokens, heads] = values.transpose(0, 1).to(heads_v.dtype)
