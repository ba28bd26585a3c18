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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.buffer import StaticKVBuffer
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.fast.paged import BlockTable
from ragcompress.kv.fast.pool import ChunkPool, RequestLease
from ragcompress.models.arch import UnsupportedModelError

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.packed import BufferChunk
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
    _lease: RequestLease | None = field(default=None, init=False, repr=False)

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
        inv = Rotary.of(arch.rope[0]).inv_freq.to(device=dev)
        self.attention = self.pool.attention(self.tables, inv.float().contiguous())
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
        block (``reuse`` changes nothing: placement never copies a resident chunk). The previous
        request's lease ends here, after the new one is taken (so shared chunks stay)."""
        items: list[Any] = [prefix, *chunks]
        tokens = sum(int(c.num_tokens) for c in items)
        if tokens > self.capacity:
            from ragcompress.kv.fast.buffer import BufferOverflowError

            raise BufferOverflowError(
                f"prefix + {len(chunks)} chunks keep {tokens} tokens; the generator takes capacity="
                f"{self.capacity} per request"
            )
        pool = self.pool
        assert pool is not None
        lease = pool.lease_request(items)
        deltas, pos, bs = [], 0, pool.block_size
        for c in items:
            deltas.append(pos - int(c.base_offset))
            pos += int(c.length)
        try:
            for table, group in zip(self.tables, lease.tables, strict=True):
                rows = [
                    (blk, min(bs, e.num_tokens - j * bs), deltas[i])
                    for i, e in group
                    for j, blk in enumerate(e.blocks)
                ]
                table.write(rows)
        except BaseException:
            pool.release_request(lease)
            raise
        old, self._lease = self._lease, lease
        if old is not None:
            pool.release_request(old)
        buf = self.buffer
        buf.reset()
        buf.ctx_len, buf.next_position = tokens, pos
        buf.commit()
        return pos

    def release(self) -> None:
        """End the current request's lease (its chunks may then be evicted) and empty the
        table; the next :meth:`load` starts a new one."""
        if self._lease is not None:
            assert self.pool is not None
            for table in self.tables:
                table.clear()
            self.pool.release_request(self._lease)
            self._lease = None

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
