"""PagedFastGenerator: the fast engine with zero-copy chunk placement.

Same steps, graphs, prefill and decode as :class:`~ragcompress.kv.fast.FastGenerator`; what
differs is where the context lives. The buffer's context region *is* the chunk pool's storage
(:class:`PoolBuffer`), so the decoder step hands each layer's pool view to the attention
unchanged, and the pool's attention (:class:`~ragcompress.kv.fast.paged.PagedCascade`, or
:class:`~ragcompress.kv.fast.paged_int4.Int4PagedCascade` for an int4 pool) reads the request's
blocks through its block tables. Loading a request = leasing its chunks in the pool (inserting
the ones not yet resident: a copy, once per chunk, not per request) and writing one table row
per block (an int4 pool lists its dense prefix in a table of its own): no K/V is copied for a
resident chunk, and a chunk may repeat or move freely.

Scope: dense global-attention families with one RoPE table (Llama, Qwen, Mistral); families
with local sliding-window layers, per-layer RoPE tables or soft-capped attention are refused
when the generator is built. Assembled contexts (``ape``, ``blend``) need the copy engine.
Host-tier chunks (:class:`~ragcompress.kv.fast.host.HostChunk`) are copied into the pool when
they enter (once; int4 codes cross as stored), not streamed under compute.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.buffer import BufferOverflowError, StaticKVBuffer
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.fast.paged import BlockTable
from ragcompress.kv.fast.pool import ChunkPool, PoolEntry, RequestLease
from ragcompress.models.arch import UnsupportedModelError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.attention import CascadeAttention
    from ragcompress.kv.fast.packed import BufferChunk
    from ragcompress.kv.fast.shapes import _Shape
    from ragcompress.kv.fast.step import DecoderStep

__all__ = ["PagedFastGenerator", "PoolBuffer"]


@dataclass(eq=False)
class PoolBuffer(StaticKVBuffer):
    """A :class:`~ragcompress.kv.fast.buffer.StaticKVBuffer` whose context region is ``pool``'s
    storage (``capacity`` = the pool's slots); only the question regions are its own."""

    pool: ChunkPool | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        import torch

        pool = self.pool
        if pool is None:
            raise ValueError("PoolBuffer needs a pool")
        want = (pool.layers, pool.kv_heads, pool.head_dim, pool.slots)
        if (self.layers, self.kv_heads, self.head_dim, self.capacity) != want:
            raise ValueError(f"PoolBuffer shaped {self.layers, self.kv_heads, self.head_dim}, pool {want}")
        if self.positions:
            raise ValueError("the chunk pool keeps no slot positions (local sliding-window layers)")
        qshape = (self.layers, self.max_batch * self.region, self.kv_heads, self.head_dim)
        # the pool's storage, whatever its form (Int4ChunkPool: codes), is the context region
        self.ctx_keys, self.ctx_values = pool.keys, pool.values
        self.q_keys = torch.zeros(qshape, dtype=pool.compute_dtype, device=pool.keys.device)
        self.q_values = torch.zeros_like(self.q_keys)
        self.ctx_len_t = torch.zeros(1, dtype=torch.int32, device=pool.keys.device)
        self.ctx_pos = torch.zeros(0, dtype=torch.long, device=pool.keys.device)


@dataclass(eq=False)
class PagedFastGenerator(FastGenerator):
    """A :class:`~ragcompress.kv.fast.FastGenerator` reading chunks in place from ``pool``
    (shared with other generators or not). ``capacity``: context tokens per request (prefix +
    kept chunk tokens); ``max_blocks``: pool blocks one request may read (the block table's
    rows; default: twice ``capacity`` in blocks, room for one partly filled block per chunk of
    at least half a block). ``attention`` must be left None: it is the paged cascade."""

    pool: ChunkPool | None = field(default=None, kw_only=True)
    max_blocks: int | None = field(default=None, kw_only=True)
    tables: list[BlockTable] = field(init=False, repr=False)  # the pool's table_sizes
    _leases: list[RequestLease] = field(default_factory=list, init=False, repr=False)
    _inv_freq: torch.Tensor = field(init=False, repr=False)  # (D // 2,) fp32, every layer's RoPE
    # a ragged batch: each question's first position, its tables and their attention
    _ragged_starts: list[int] | None = field(default=None, init=False, repr=False)
    _ragged: tuple[list[BlockTable], CascadeAttention] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from ragcompress.models.arch import arch_for
        from ragcompress.models.rope import Rotary

        if self.pool is None:
            raise ValueError("PagedFastGenerator needs a pool (ChunkPool.for_model(model, tokens))")
        if self.attention is not None:
            raise ValueError(
                "PagedFastGenerator attends through its pool (PagedCascade): leave attention None"
            )
        arch = arch_for(self.model)
        if arch.local_window is not None or len(set(arch.rope)) != 1 or arch.attn_softcap:
            raise UnsupportedModelError(
                f"{arch.family}: paged placement reads dense global-attention layers with one RoPE table; "
                "local sliding-window layers, per-layer RoPE tables and soft-capped attention need "
                "FastGenerator (the copy placement)"
            )
        bs = self.pool.block_size
        max_blocks = self.max_blocks or 2 * -(-self.capacity // bs)
        dev = self.pool.keys.device
        self.tables = [BlockTable(n, dev) for n in self.pool.table_sizes(max_blocks)]
        self._inv_freq = Rotary.of(arch.rope[0]).inv_freq.to(device=dev).float().contiguous()
        self.attention = self.pool.attention(self.tables, self._inv_freq)
        super().__post_init__()

    def _new_buffer(self, step: DecoderStep, param: torch.Tensor) -> StaticKVBuffer:
        pool = self.pool
        assert pool is not None  # checked in __post_init__
        if param.device != pool.keys.device or param.dtype != pool.compute_dtype:
            raise ValueError(
                f"the pool attends in {pool.compute_dtype} on {pool.keys.device}; the model runs "
                f"{param.dtype} on {param.device}"
            )
        return PoolBuffer(
            layers=step.num_layers,
            kv_heads=step.kv_heads,
            head_dim=step.head_dim,
            capacity=pool.slots,
            region=self.max_question + self.max_new_tokens,
            max_batch=self.max_batch,
            pool=pool,
        )

    def load_reusing(
        self, prefix: BufferChunk, chunks: Sequence[BufferChunk | KVChunk], reuse: bool = True
    ) -> int:
        """Place prefix + chunks (in this order) by leasing them in the pool and writing the
        block table; returns the next position. Chunks already resident cost a table row per
        block; placement never copies a resident chunk. The previous request's lease ends here,
        after the new one is taken (so shared chunks stay). ``reuse``: the very objects of the
        previous placed request, in the same order (a follow-up question over the same
        chunks), are not placed again: that request's lease is still held and its table rows
        and context length are on the device as it wrote them (:meth:`load`, ``reuse=False``,
        always places)."""
        items = [prefix, *chunks]
        old = self._resident
        if reuse and len(old) == len(items) and all(map(operator.is_, old, items)):
            return self.buffer.next_position
        self._resident = []  # a failed placement leaves nothing to reuse
        ((lease, rows, pos),) = self._place([(prefix, chunks)])
        try:
            for table, group in zip(self.tables, rows, strict=True):
                table.write(group)
        except BaseException:
            self._release([lease])
            raise
        self._swap([lease], None)
        self.buffer.place(pos[0], pos[1])
        self._resident = items
        return pos[1]

    def load_batch(
        self, requests: Sequence[tuple[BufferChunk, Sequence[BufferChunk | KVChunk]]]
    ) -> list[int]:
        """A ragged batch: question ``i`` of the next :meth:`prefill` / :meth:`generate` reads
        ``requests[i]``'s prefix + chunks (its own chunk set, in place in the pool: one table
        per question) and starts at its own position, which this returns (B,). The next steps
        must hold exactly ``len(requests)`` questions, in this order; a later :meth:`load`
        ends the batch. All or nothing: a request that cannot be placed releases the others."""
        if not 0 < len(requests) <= self.max_batch:
            raise BufferOverflowError(
                f"{len(requests)} requests in one batch; the generator holds max_batch={self.max_batch}"
            )
        self._resident = []  # the shared table's request ends: nothing to reuse
        placed = self._place(requests)
        tables, _ = self._ragged_tables()
        try:
            for k, table in enumerate(tables):
                table.write_ragged([rows[k] for _, rows, _ in placed])
        except BaseException:
            self._release([lease for lease, _, _ in placed])
            raise
        self._swap([lease for lease, _, _ in placed], [pos for _, _, (_, pos) in placed])
        self.buffer.place(0, 0)  # the shared context is empty; each question's is in its table
        assert self._ragged_starts is not None
        return list(self._ragged_starts)

    def _place(
        self, requests: Sequence[tuple[BufferChunk, Sequence[BufferChunk | KVChunk]]]
    ) -> list[tuple[RequestLease, list[np.ndarray], tuple[int, int]]]:
        """Lease each request's prefix + chunks: per request its lease, its rows per pool table
        and ``(tokens, next position)``. Releases what it took if one fails."""
        pool = self.pool
        assert pool is not None
        done: list[tuple[RequestLease, list[np.ndarray], tuple[int, int]]] = []
        try:
            for prefix, chunks in requests:
                items: list[Any] = [prefix, *chunks]
                deltas, pos, tokens = item_deltas(items)
                if tokens > self.capacity:
                    raise BufferOverflowError(
                        f"prefix + {len(chunks)} chunks keep {tokens} tokens; the generator takes "
                        f"capacity={self.capacity} per request"
                    )
                lease = pool.lease_request(items)
                done.append((lease, [table_rows(group, deltas) for group in lease.tables], (tokens, pos)))
        except BaseException:
            self._release([lease for lease, _, _ in done])
            raise
        return done

    def _ragged_tables(self) -> tuple[list[BlockTable], CascadeAttention]:
        """The per-question tables (``max_batch`` questions each) and the attention reading
        them, built on the first ragged batch."""
        if self._ragged is None:
            pool = self.pool
            assert pool is not None
            tables = [BlockTable(t.max_blocks, pool.keys.device, self.max_batch) for t in self.tables]
            self._ragged = tables, pool.attention(tables, self._inv_freq)
        return self._ragged

    def _swap(self, leases: list[RequestLease], starts: list[int] | None) -> None:
        """The new request's leases in, the previous one's out (after, so shared chunks stay)."""
        old, self._leases, self._ragged_starts = self._leases, leases, starts
        self._release(old)

    def _release(self, leases: list[RequestLease]) -> None:
        assert self.pool is not None
        for lease in leases:
            self.pool.release_request(lease)

    def _starts(self) -> list[int] | None:
        return self._ragged_starts

    def _shape(self, b: int, t: int, gated: bool = False, probe: CascadeAttention | None = None) -> _Shape:
        """A ragged batch's steps read the per-question tables (their own captured graphs)."""
        if self._ragged_starts is None or gated:
            return super()._shape(b, t, gated, probe)
        if probe is not None:
            raise ValueError("a ragged batch (load_batch) has no shared context to probe")
        key = (b, t, 3)
        return self._shapes.get(key) or self._new_shape(key, b, t, self._ragged_tables()[1])

    def release(self) -> None:
        """End the current request's leases (its chunks may then be evicted) and empty the
        tables; the next :meth:`load` starts a new one."""
        self._resident = []
        if self._leases:
            for table in self.tables:
                table.clear()
            for table in self._ragged[0] if self._ragged is not None else []:
                table.clear()
            self._swap([], None)

    def load_context(
        self,
        layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
        position: int,
        positions: torch.Tensor | None = None,
    ) -> int:
        """Refused: an assembled context (``ape``, ``blend``) is no set of pool chunks."""
        raise ValueError(
            "PagedFastGenerator places chunks from its pool; an assembled context (ape, blend) needs "
            "FastGenerator, the copy placement"
        )


# what placement reads of every item, in one C-level call an item
_PLACE_FIELDS = operator.attrgetter("base_offset", "length", "num_tokens")


def item_deltas(items: Sequence[Any]) -> tuple[list[int], int, int]:
    """``(deltas, next position, tokens kept)`` of items placed one after another: item ``i``
    moves by ``deltas[i]``, its place in the prompt less its ``base_offset``. Each item's three
    fields come from one C-level getter: host work the step waits for, 2x faster than reading
    them one by one (80 -> 43 µs for 256 chunks on the 2-core development machine; numpy over
    the same tuples: 88)."""
    deltas, pos, tokens = [], 0, 0
    for base, length, kept in map(_PLACE_FIELDS, items):
        deltas.append(pos - base)
        pos += length
        tokens += kept
    return deltas, int(pos), int(tokens)  # plain ints out, whatever integer type the fields hold


def table_rows(group: Sequence[tuple[int, PoolEntry]], deltas: Sequence[int]) -> np.ndarray:
    """(n, 3) int32 block-table rows ``[block, used, delta]`` of one table's ``(item index,
    entry)`` pairs, in context order: each entry's cached rows, its item's delta beside them."""
    import numpy as np

    parts, runs, moved = [], [], []
    for i, e in group:  # one pass: this runs per chunk of every request, before its step
        parts.append(e.table_rows)
        runs.append(len(e.blocks))
        moved.append(deltas[i])
    if not parts:
        return np.empty((0, 3), dtype=np.int32)
    out = np.empty((sum(runs), 3), dtype=np.int32)
    np.concatenate(parts, out=out[:, :2])
    out[:, 2] = np.repeat(np.array(moved, dtype=np.int32), runs)
    return out
