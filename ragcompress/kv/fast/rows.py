"""What one request writes into the buffer's context, as rows for the gather.

Every chunk kind adds its tensors here (:meth:`~ragcompress.kv.fast.packed.BufferChunk.gather_into`)
in one of two forms, whatever its class: dense rows of head_dim, or quantized heads. Then one
launch per form writes them all (:mod:`ragcompress.kv.fast._gather` on CUDA, its torch twin
:mod:`ragcompress.kv.fast.gather_reference` elsewhere), keys re-rotated on the way.

Destination rows: the context ``(capacity, layers, kv_heads, head_dim)`` seen as
``(capacity * layers * kv_heads, head_dim)``; row ``(t * layers + l) * kv_heads + h`` is head
``h`` of layer ``l`` at slot ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.buffer import StaticKVBuffer
    from ragcompress.kv.fast.layer_plan import DenseBlock
    from ragcompress.kv.kernels import QuantizedKV

#: the dense gather table's columns, as the kernel reads them (``_gather.py``)
DENSE_FIELDS = ("key_offset", "value_offset", "rows", "dst_row", "delta", "run", "stride")
_KEY, _VALUE, _ROWS, _DST, _DELTA, _RUN, _STRIDE = range(len(DENSE_FIELDS))

__all__ = ["DENSE_FIELDS", "DenseRows", "GatherRows", "QuantizedRows", "blocks_table", "even_entries"]


@dataclass(frozen=True, eq=False)
class DenseRows:
    """keys/values (rows, head_dim) contiguous, in the buffer's dtype and device. Source row
    ``r`` goes to destination row ``dst_row + (r % run) * stride + r // run``: a packed chunk
    is one run of consecutive rows (``run = rows, stride = 1``); a stored layer (kv_heads, n,
    head_dim) is kv_heads runs of n tokens, a token every ``stride = layers * kv_heads`` rows.
    Keys move by ``delta`` positions."""

    keys: torch.Tensor
    values: torch.Tensor
    dst_row: int
    run: int
    stride: int
    delta: int

    @property
    def rows(self) -> int:
        return int(self.keys.shape[0])


@dataclass(frozen=True, eq=False)
class QuantizedRows:
    """``kv``'s heads (contiguous, on the buffer's device) go to the destination heads
    ``head0 ..`` of the stacked ``layers * kv_heads`` at slots ``slot ..``; keys move by
    ``delta`` positions. A quantized packed chunk is every layer at once (``head0 = 0``), a
    stored quantized layer ``l`` its kv_heads (``head0 = l * kv_heads``)."""

    kv: QuantizedKV
    head0: int
    slot: int
    delta: int


@dataclass(eq=False)
class GatherRows:
    """The rows of one request for ``buffer``, collected before any byte is written."""

    buffer: StaticKVBuffer
    dense: list[DenseRows] = field(default_factory=list)
    quantized: list[QuantizedRows] = field(default_factory=list)
    blocks: list[DenseBlock] = field(default_factory=list)  # dense rows planned per chunk

    def all_dense(self) -> list[DenseRows]:
        """Every dense entry, the blocks' included (the torch reference's form)."""
        return self.dense + [r for b in self.blocks for r in b.rows()]

    def dense_table(self) -> tuple[torch.Tensor, int] | None:
        """(entries, 7) int64 host table of the dense gather (offsets from ``buffer.ctx_keys``,
        see :data:`DENSE_FIELDS`), long single runs cut by
        :func:`even_entries`, and the largest entry's rows; None without dense entries."""
        import torch

        if not self.dense and not self.blocks:
            return None
        base = self.buffer.ctx_keys
        parts = [blocks_table(self.blocks)] if self.blocks else []
        if self.dense:
            rows = [
                [_offset(r.keys, base), _offset(r.values, base), r.rows, r.dst_row, r.delta, r.run, r.stride]
                for r in self.dense
            ]
            parts.append(torch.tensor(rows, dtype=torch.long))
        return even_entries(torch.cat(parts), self.buffer.head_dim)

    def add_dense(
        self, keys: torch.Tensor, values: torch.Tensor, dst_row: int, run: int, stride: int, delta: int
    ) -> None:
        """keys/values (..., head_dim) flattened to rows, moved to the buffer's device and dtype
        when they are elsewhere (a copy), see :class:`DenseRows`."""
        buf = self.buffer
        d = buf.head_dim

        def rows(t: torch.Tensor) -> torch.Tensor:
            # a chunk already in the buffer's place and form (the GPU tier's packed chunks) is
            # viewed, not passed through .to/.reshape/.contiguous: ~3 dispatches per chunk of host
            # time before the write, 64 chunks a 32K request
            if t.device == buf.ctx_keys.device and t.dtype == buf.ctx_keys.dtype and t.is_contiguous():
                return t.view(-1, d)
            return t.to(device=buf.ctx_keys.device, dtype=buf.ctx_keys.dtype).reshape(-1, d).contiguous()

        k, v = rows(keys), rows(values)
        if k.shape[0]:
            self.dense.append(DenseRows(k, v, dst_row, run, stride, delta))

    def add_quantized(self, kv: QuantizedKV, head0: int, slot: int, delta: int) -> None:
        """``kv`` (heads, n, ..) moved to the buffer's device (scales and zeros to one dtype, as
        one launch reads them from one base), see :class:`QuantizedRows`."""
        from ragcompress.kv.kernels import QuantizedKV

        if kv.num_tokens == 0:
            return
        dev = self.buffer.ctx_keys.device
        sdt = kv.key_scale.dtype

        def codes(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=dev).contiguous()

        def scales(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=dev, dtype=sdt).contiguous()

        kc, ks, kz, vc, vs, vz = kv.tensors()
        moved = QuantizedKV(
            codes(kc), scales(ks), scales(kz), codes(vc), scales(vs), scales(vz), bits=kv.bits, group=kv.group
        )
        self.quantized.append(QuantizedRows(moved, head0, slot, delta))


def _offset(t: torch.Tensor, base: torch.Tensor) -> int:
    """Element offset of ``t`` from ``base`` (same dtype): how the kernel reaches ``t``."""
    diff = t.data_ptr() - base.data_ptr()
    size = t.element_size()
    if t.dtype != base.dtype or diff % size:
        raise ValueError(f"cannot address a {t.dtype} tensor from a {base.dtype} base")
    return diff // size


#: rows an entry of one run keeps, at least, when :func:`even_entries` cuts it (more where an
#: entry of several runs, which is never cut, is longer)
EVEN_ROWS = 4096


def even_entries(table: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, int]:
    """``(table, largest rows)``; where the table has entries of several runs (stored layers:
    kv_heads runs each), every entry of one run (``run == rows``: packed chunks, the prefix)
    longer than the longest of those, or than :data:`EVEN_ROWS`, cut into entries of that many
    rows. The gather's grid gives every entry the largest entry's blocks: one packed prefix of
    16,384 rows next to 2,048 stored layers of 4,096 left three blocks in four idle (5.3
    against 2.5 ms for 32K on an H200, ``benchmarks/results/ttft_stored_gather_h200/``). Source
    row ``start + r`` of a cut piece is row ``r`` of an entry starting ``start`` rows on, with
    ``start * stride`` destination rows."""
    import numpy as np
    import torch

    # numpy, not torch: torch's CPU kernels hand even these few thousand rows to a thread pool,
    # whose wake-up cost milliseconds per request on a 16-core GPU host
    t = table.numpy()
    rows, run = t[:, _ROWS], t[:, _RUN]
    single = run == rows
    if single.all():  # packed chunks alone: their entries are alike already (and left as they were)
        return table, int(rows.max())
    cap = max(EVEN_ROWS, int(rows[~single].max()))
    pieces = np.where(single, np.maximum((rows + cap - 1) // cap, 1), 1)
    if int(pieces.max()) == 1:
        return table, int(rows.max())
    out = np.repeat(t, pieces, axis=0)
    start = (np.arange(out.shape[0]) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * cap  # 0: not cut
    one = np.repeat(single, pieces)  # the single-run entries (each piece is one run again)
    cut = np.where(one, np.minimum(out[:, _ROWS] - start, cap), out[:, _ROWS])
    out[:, _KEY] += start * head_dim
    out[:, _VALUE] += start * head_dim
    out[:, _DST] += start * out[:, _STRIDE]
    out[:, _RUN] = np.where(one, cut, out[:, _RUN])
    out[:, _ROWS] = cut
    return torch.from_numpy(out), int(cut.max())


def blocks_table(blocks: Sequence[DenseBlock]) -> torch.Tensor:
    """(rows, 7) int64 host rows of the dense gather for every block, in order: each plan's rows
    with the block's slot and delta filled in, in a handful of array ops for all blocks, not
    three tensor ops per block (64 blocks at 32K: 1.6 ms of host time per request on the
    development machine).
    In numpy: torch's CPU kernels hand even these few thousand rows to a thread pool, whose
    wake-up cost milliseconds per request on a 16-core GPU host."""
    import numpy as np
    import torch

    tables = [
        b.plan.table.numpy()
        if len(b.layers) == b.plan.table.shape[0]
        else b.plan.table.numpy()[list(b.layers)]
        for b in blocks
    ]
    counts = [t.shape[0] for t in tables]
    t = np.concatenate(tables)  # a new array: the plans' tables stay as they are
    t[:, _DST] += np.repeat([b.slot * b.plan.stride for b in blocks], counts)
    t[:, _DELTA] = np.repeat([b.delta for b in blocks], counts)
    return torch.from_numpy(t)
