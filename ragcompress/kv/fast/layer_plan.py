"""A stored chunk's dense layers, made ready for the gather once, not once per request.

A stored :class:`~ragcompress.kv.chunk.KVChunk` adds one gather entry per layer (a 32K context
of 512-token chunks on a 32-layer model: 2,048 entries). Built per request, each entry cost the
host ~8 µs (device and dtype checks, reshapes, a dataclass, a table row of Python ints): 17 ms
at 32K on an H200, more than the copy itself (``benchmarks/results/ttft_stored_h200``). Chunks
are immutable once stored, so the layers' flattened views and their table rows (element
offsets from the buffer's base) are made once per chunk and buffer (:func:`dense_plan`, kept
while the chunk lives); a request then adds one :class:`DenseBlock` per chunk, whose table rows
are the plan's with the request's slot and position delta filled in by two tensor ops.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# the destination column of a table row (:data:`ragcompress.kv.fast.rows.DENSE_FIELDS`)
from ragcompress.kv.fast.rows import _DST

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.buffer import StaticKVBuffer
    from ragcompress.kv.fast.rows import DenseRows

__all__ = ["DenseBlock", "DensePlan", "dense_plan"]


@dataclass(frozen=True, eq=False)
class DensePlan:
    """Every layer of one chunk for one buffer: ``keys``/``values`` per layer (kv_heads * n,
    head_dim) views of the chunk's tensors; ``table`` (layers, 7) int64 on the host: the gather
    rows with the destination relative to slot 0 and delta 0; ``base``: the buffer's key tensor
    the offsets count from (its data pointer)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    table: torch.Tensor
    base: int
    run: int
    stride: int


@dataclass(frozen=True, eq=False)
class DenseBlock:
    """Layers ``layers`` of a plan, written at ``slot`` with keys moved by ``delta``."""

    plan: DensePlan
    layers: tuple[int, ...]
    slot: int
    delta: int

    def rows(self) -> list[DenseRows]:
        """The same as :class:`~ragcompress.kv.fast.rows.DenseRows` (the torch reference's form)."""
        from ragcompress.kv.fast.rows import DenseRows

        p = self.plan
        return [
            DenseRows(
                p.keys[li],
                p.values[li],
                self.slot * p.stride + int(p.table[li, _DST]),
                p.run,
                p.stride,
                self.delta,
            )
            for li in self.layers
        ]


_PLANS: weakref.WeakKeyDictionary[Any, DensePlan] = weakref.WeakKeyDictionary()


def dense_plan(chunk: KVChunk, buffer: StaticKVBuffer) -> DensePlan | None:
    """The chunk's plan for ``buffer`` (made on first use, kept while the chunk lives); None when
    a layer is not dense, or its tensors are not contiguous on the buffer's device and dtype
    (those take the per-layer path, which converts)."""
    import torch

    base = buffer.ctx_keys
    plan = _PLANS.get(chunk)
    if plan is not None and plan.base == base.data_ptr():
        return plan
    from ragcompress.kv.chunk import DenseLayer

    keys, values = [], []
    for layer in chunk.layers:
        if type(layer) is not DenseLayer:  # other forms rebuild their K/V on each call
            return None
        k, v, _ = layer.dense()
        if any(t.device != base.device or t.dtype != base.dtype or not t.is_contiguous() for t in (k, v)):
            return None
        keys.append(k.reshape(-1, buffer.head_dim))
        values.append(v.reshape(-1, buffer.head_dim))
    from ragcompress.kv.fast.rows import _offset

    n, stride = chunk.num_tokens, buffer.layers * buffer.kv_heads
    rows = [
        [_offset(k, base), _offset(v, base), int(k.shape[0]), li * buffer.kv_heads, 0, n, stride]
        for li, (k, v) in enumerate(zip(keys, values, strict=True))
    ]
    plan = DensePlan(
        tuple(keys), tuple(values), torch.tensor(rows, dtype=torch.long), base.data_ptr(), n, stride
    )
    _PLANS[chunk] = plan
    return plan
