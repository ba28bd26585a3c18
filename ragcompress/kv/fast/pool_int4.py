"""A chunk pool that keeps its blocks in int4, read and dequantized inside the paged kernel.

:class:`~ragcompress.kv.fast.pool.ChunkPool` stores bf16/fp16 K/V; a quantized chunk is expanded
when it enters. :class:`Int4ChunkPool` stores every chunk in the KIVI-style int4 format of
:mod:`~ragcompress.kv.kernels.quant_format`, grouped to fit the pool: **one key group per pool
block** (per channel, over the block's ``block_size`` tokens: a chunk starts on a block boundary,
so its groups never straddle two chunks) and **two value groups per token** (per token, over
each half of a head: a half-width product then sees one value scale). A chunk is quantized
once, when it enters; a request reads the codes in place and the attention
(:class:`~ragcompress.kv.fast.paged_int4.Int4PagedCascade`) dequantizes each block in registers.

Per K or V element the pool holds 0.5 byte of codes + 4 / ``block_size`` (keys) or 8 /
``head_dim`` (values) bytes of fp16 scale and zero: 28% of bf16 with blocks of 64 and heads of
128, so ~3.5x the chunks in the same memory. On an H200 at 32K the context pass reads them at
1.2-1.5x the bf16 pass's time (``benchmarks/results/ttft_paged_int4_v2_h200/``).

The shared prefix (the system prompt and template every request starts with, with the
attention sink) stays in the model's dtype, in a small dense side pool (``prefix_tokens``
slots): outlier tokens want full precision (IntactKV; KIVI's full-precision window), and with
the prefix dense the engine gives the eager path's tokens over int4 chunks stored in the pool's
grouping. The attention reads it through a second block table and merges the two context
passes with the question's own.

:class:`Int8ChunkPool` is the same pool at 8 bits: one code byte a channel, the same groups
(53% of bf16: ~1.9x the chunks), for chunks that should lose almost nothing.

A chunk stored int4 with the same grouping (``QuantizePress(bits=4, group_size=block_size)``
with ``block_size == head_dim // 2``) enters with the codes it was stored with: re-quantizing
its dequantized values finds the same per-group minimum and maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ragcompress.kv.fast.pool import ChunkPool, PoolEntry, PoolFullError, RequestLease

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.packed import BufferChunk, PackedChunk
    from ragcompress.kv.fast.paged import BlockTable
    from ragcompress.kv.fast.paged_int4 import Int4PagedCascade

__all__ = ["Int4ChunkPool", "Int8ChunkPool"]


@dataclass(eq=False)
class Int4ChunkPool(ChunkPool):
    """A :class:`~ragcompress.kv.fast.pool.ChunkPool` in int4. ``keys``/``values`` hold the codes
    (slots, layers, kv_heads, head_dim // 2) uint8, half-split nibbles (byte ``j``: channel
    ``j`` low, ``j + head_dim // 2`` high); ``key_scale``/``key_zero`` (num_blocks, layers,
    kv_heads, head_dim) fp16, one per block and channel; ``value_scale``/``value_zero`` (slots,
    layers, kv_heads, 2) fp16, one per token and half head. ``dtype``: the dtype the model
    attends in."""

    bits: ClassVar[int] = 4  # code bits a channel
    prefix_tokens: int = 4096
    prefix_pool: ChunkPool = field(init=False, repr=False)  # dense: the prefix
    key_scale: torch.Tensor = field(init=False, repr=False)
    key_zero: torch.Tensor = field(init=False, repr=False)
    value_scale: torch.Tensor = field(init=False, repr=False)
    value_zero: torch.Tensor = field(init=False, repr=False)
    bad: torch.Tensor = field(init=False, repr=False)  # (1,) int32

    def _allocate(self) -> None:
        import torch

        if self.head_dim % 2:
            raise ValueError(f"an int{self.bits} pool needs an even head_dim, got {self.head_dim}")
        lkd = (self.layers, self.kv_heads)
        codes = (self.slots, *lkd, self.head_dim * self.bits // 8)
        dev, f16 = self.device, torch.float16
        self.keys = torch.zeros(codes, dtype=torch.uint8, device=dev)
        self.values = torch.zeros(codes, dtype=torch.uint8, device=dev)
        self.key_scale = torch.zeros((self.num_blocks, *lkd, self.head_dim), dtype=f16, device=dev)
        self.key_zero = torch.zeros_like(self.key_scale)
        self.value_scale = torch.zeros((self.slots, *lkd, 2), dtype=f16, device=dev)
        self.value_zero = torch.zeros_like(self.value_scale)
        self.bad = torch.zeros(1, dtype=torch.int32, device=dev)  # set by the kernel: see _written
        self.prefix_pool = ChunkPool(
            self.layers, self.kv_heads, self.head_dim, -(-int(self.prefix_tokens) // self.block_size),
            self.block_size, self.dtype, self.device,
        )  # fmt: skip

    def table_sizes(self, max_blocks: int) -> list[int]:
        """The prefix's table (dense side pool), then the chunks' (quantized)."""
        return [self.prefix_pool.num_blocks, max_blocks]

    def attention(self, tables: Sequence[BlockTable], inv_freq: torch.Tensor) -> Int4PagedCascade:
        from ragcompress.kv.fast.paged_int4 import Int4PagedCascade

        return Int4PagedCascade(
            tables[1], inv_freq, self.block_size, codes=self.keys, key_scale=self.key_scale,
            key_zero=self.key_zero, value_scale=self.value_scale, value_zero=self.value_zero,
            prefix_table=tables[0], prefix_keys=self.prefix_pool.keys, prefix_values=self.prefix_pool.values,
        )  # fmt: skip

    def lease_request(self, items: Sequence[BufferChunk | KVChunk]) -> RequestLease:
        """The first item (the prefix) in the dense side pool, the chunks quantized."""
        if not items:
            raise ValueError("a request places at least its prefix")
        try:
            side = self.prefix_pool.acquire(items[:1])
        except PoolFullError as exc:
            hint = f"the prefix does not fit the int{self.bits} pool's dense side (prefix_tokens)"
            raise PoolFullError(f"{hint}: {exc}") from exc
        try:
            main = self.acquire(items[1:])
        except BaseException:
            self.prefix_pool.release(side)
            raise
        chunks = [(i + 1, e) for i, e in enumerate(main.entries)]
        return RequestLease([(self.prefix_pool, side), (self, main)], [[(0, side.entries[0])], chunks])

    def _write(self, packed: PackedChunk, blocks: tuple[int, ...], runs: list[tuple[int, int, int]]) -> None:
        import torch

        from ragcompress.kv.kernels.quant_format import quantize_keys, quantize_values

        n, lay, kvh, d = packed.keys.shape
        dev, bs = self.keys.device, self.block_size
        if self._kernel:  # one launch a run, no fp32 copies, the finite check read in _written
            from ragcompress.kv.fast._pool_quant import quantize_run

            k, v = packed.keys.to(device=dev), packed.values.to(device=dev)
            for run in runs:
                quantize_run(self, k, v, run, self.bad)
            return

        def heads(t: torch.Tensor) -> torch.Tensor:  # (n, L, kvh, d) -> (L * kvh, n, d) fp32
            return t.to(device=dev, dtype=torch.float32).permute(1, 2, 0, 3).reshape(lay * kvh, n, d)

        def back(t: torch.Tensor) -> torch.Tensor:  # (L * kvh, m, c) -> (m, L, kvh, c)
            return t.view(lay, kvh, *t.shape[1:]).permute(2, 0, 1, 3)

        kc, ks, kz = quantize_keys(heads(packed.keys), self.bits, bs)
        vc, vs, vz = quantize_values(heads(packed.values), self.bits, d // 2)
        kc, vc, vs, vz, ks, kz = (back(t) for t in (kc, vc, vs, vz, ks, kz))
        for src, dst, count in runs:  # a run starts on a block boundary: its key groups with it
            at, of = slice(dst, dst + count), slice(src, src + count)
            self.keys[at], self.values[at] = kc[of], vc[of]
            self.value_scale[at], self.value_zero[at] = vs[of], vz[of]
            g, b, m = src // bs, dst // bs, -(-count // bs)
            self.key_scale[b : b + m], self.key_zero[b : b + m] = ks[g : g + m], kz[g : g + m]

    def _written(self, fresh: list[PoolEntry]) -> None:
        """The kernel flags a block holding a NaN or an infinity: the request's new chunks are
        dropped and refused (read once a request with new chunks, a wait for its writes)."""
        if self._kernel and fresh and int(self.bad.item()):
            self.bad.zero_()
            self._drop(fresh)
            raise ValueError(
                "cannot quantize non-finite keys/values (inf or nan in a chunk entering the "
                f"int{self.bits} pool): none of the request's new chunks entered it"
            )

    @property
    def _kernel(self) -> bool:
        """Whether chunks enter through the Triton kernel (CUDA, tiles of powers of two)."""
        from ragcompress.kv.fast.write import triton_available

        half = self.head_dim // 2
        pow2 = not (self.block_size & (self.block_size - 1) or half & (half - 1))
        return self.keys.is_cuda and pow2 and triton_available()

    def dequantized(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s keys and values, (slots, kv_heads, head_dim) fp32: what the kernel
        computes in registers, for the torch reference and tests."""
        from ragcompress.kv.fast.paged_int4 import dequantized_layer

        return dequantized_layer(
            self.keys[:, layer], self.key_scale[:, layer], self.key_zero[:, layer],
            self.values[:, layer], self.value_scale[:, layer], self.value_zero[:, layer], self.block_size,
        )  # fmt: skip


@dataclass(eq=False)
class Int8ChunkPool(Int4ChunkPool):
    """:class:`Int4ChunkPool` at 8 bits: ``keys``/``values`` hold one code byte a channel
    (slots, layers, kv_heads, head_dim) uint8; scales, zeros, groups and the dense prefix as
    there. The same kernel reads it (:mod:`~ragcompress.kv.fast._paged_int4`, ``BITS = 8``)."""

    bits: ClassVar[int] = 8
