"""Paged attention over an int4 chunk pool: the blocks are dequantized where they are read.

:class:`Int4PagedCascade` is :class:`~ragcompress.kv.fast.paged.PagedCascade` for an
:class:`~ragcompress.kv.fast.pool_int4.Int4ChunkPool`. The decoder step hands each layer the
buffer's context views, which for this pool are the layer's key and value codes; the cascade
finds the layer's scales and zeros from them. On CUDA in fp16/bf16 the context pass is
:mod:`~ragcompress.kv.fast._paged_int4` (codes dequantized in registers); elsewhere
:func:`paged_int4_reference`, in fp32 torch, over the same dequantized values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ragcompress.kv.fast.attention import merge, own_pass_reference
from ragcompress.kv.fast.paged import PagedCascade, paged_context_reference, per_question
from ragcompress.kv.fast.waves import PAGED, PAGED_INT4, Tiling

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast._paged_int4 import Int4Views
    from ragcompress.kv.fast.attention import LocalWindow, StepMeta
    from ragcompress.kv.fast.paged import BlockTable

__all__ = ["Int4PagedCascade", "dequantized_layer", "paged_int4_reference"]


@dataclass(eq=False)
class Int4PagedCascade(PagedCascade):
    """Attention over the blocks of ``table`` in an int4 pool + the question's own slots; the
    pool's tensors (:class:`~ragcompress.kv.fast.pool_int4.Int4ChunkPool`'s ``keys``, whose
    layer views the step passes as ``ctx_k``, and its scales and zeros) are fields."""

    codes: torch.Tensor = field(kw_only=True, repr=False)  # (slots, layers, kv_heads, D/2) uint8
    key_scale: torch.Tensor = field(kw_only=True, repr=False)  # (blocks, layers, kv_heads, D)
    key_zero: torch.Tensor = field(kw_only=True, repr=False)
    value_scale: torch.Tensor = field(kw_only=True, repr=False)  # (slots, layers, kv_heads, 2)
    value_zero: torch.Tensor = field(kw_only=True, repr=False)
    tiling: Tiling = field(default=PAGED_INT4, kw_only=True)  # the int4 pass's own split
    # the dense side pool holding the prefix, read through its own table
    prefix_table: BlockTable = field(kw_only=True, repr=False)
    prefix_keys: torch.Tensor = field(kw_only=True, repr=False)  # (slots, layers, kv_heads, D)
    prefix_values: torch.Tensor = field(kw_only=True, repr=False)

    def __call__(
        self,
        q: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        own_k: torch.Tensor,
        own_v: torch.Tensor,
        meta: StepMeta,
        scale: float,
        *,
        window: LocalWindow | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """(B*T, heads, head_dim) in ``q``'s dtype."""
        import torch

        self._global_only(window, softcap)
        layer, views = self._views(ctx_k, ctx_v)
        pk, pv = self.prefix_keys[:, layer], self.prefix_values[:, layer]
        d, inv, bs = q.shape[-1], self.inv_freq, self.block_size
        t_p, t_c = self.prefix_table.question_rows(meta.batch), self.table.question_rows(meta.batch)
        if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and self._kernel_runs(d)):
            o_p, lse_p = per_question(
                lambda qb, tb: paged_context_reference(qb, pk, pv, tb, inv, bs, scale), q, t_p
            )
            o_c, lse_c = per_question(
                lambda qb, tb: paged_int4_reference(qb, views, tb, inv, bs, scale), q, t_c
            )
            o_a, lse_a = _merged(o_p, lse_p, o_c, lse_c)  # the two context passes: one softmax
            o_b, lse_b = own_pass_reference(q, own_k, own_v, meta, scale)
            return merge(o_a, lse_a, o_b, lse_b).to(q.dtype)
        from ragcompress.kv.fast._merge import merge_with_own
        from ragcompress.kv.fast._paged import paged_context
        from ragcompress.kv.fast._paged_int4 import paged_int4_context

        n, heads, _ = q.shape
        kvh = ctx_k.shape[1]
        ng = n * heads // kvh
        sp = self.splits or self._auto_splits(q, t_c, kvh)
        # the prefix's few blocks (a system prompt: ~2-16) in up to 4 splits; both passes write
        # their segments of one partials pair (no concatenation: 4 MB a layer at 32 tokens)
        sp_p = min(4, self.prefix_table.max_blocks)
        o_a = torch.empty((sp_p + sp) * ng, kvh, d, device=q.device, dtype=q.dtype)
        lse_a = torch.empty(sp_p + sp, kvh, ng, device=q.device, dtype=torch.float32)
        out_p, out_c = (o_a[: sp_p * ng], lse_a[:sp_p]), (o_a[sp_p * ng :], lse_a[sp_p:])
        paged_context(q, pk, pv, t_p, inv, bs, sp_p, scale, out_p, PAGED)
        paged_int4_context(q, views, t_c, inv, bs, sp, scale, out_c, self.tiling)
        return merge_with_own(o_a, lse_a, None, q, own_k, own_v, meta, scale)

    def _views(self, ctx_k: torch.Tensor, ctx_v: torch.Tensor) -> tuple[int, Int4Views]:
        """The layer ``l`` and its ``(kc, ks, kz, vc, vs, vz)``: ``ctx_k`` is ``codes[:, l]``,
        so ``l`` is its offset from the codes over a slot's per-layer stride."""
        codes = self.codes
        offset = ctx_k.data_ptr() - codes.data_ptr()
        layer = offset // (codes.stride(1) * codes.element_size())
        if ctx_k.dtype != codes.dtype or not 0 <= offset < codes.stride(0) * codes.element_size():
            raise ValueError("Int4PagedCascade reads the int4 pool's code views (pool.keys[:, layer])")
        return layer, (
            ctx_k, self.key_scale[:, layer], self.key_zero[:, layer],
            ctx_v, self.value_scale[:, layer], self.value_zero[:, layer],
        )  # fmt: skip


def _merged(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two partial attentions (o (N, H, D), lse (N, H)) as one, with its lse; both empty (lse
    -inf: no prefix or chunk block, e.g. after ``release()``) gives o 0, lse -inf."""
    import torch

    return merge(o_a, lse_a, o_b, lse_b), torch.logaddexp(lse_a, lse_b)


def paged_int4_reference(
    q: torch.Tensor,
    views: Int4Views,
    table: torch.Tensor,
    inv_freq: torch.Tensor,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The context pass in fp32 torch over one layer's int4 views: ``(o (N, heads, D), lse (N,
    heads))``. The blocks the table's rows name (all ``max_blocks`` of them: no host sync, so it
    can be captured; the rows past the count are masked) are gathered and dequantized, then
    :func:`~ragcompress.kv.fast.paged.paged_context_reference` runs over them with the rows
    renumbered: work ~ the table's rows, not the pool's size."""
    import torch

    kc, ks, kz, vc, vs, vz = views
    rows = table[1:].long()  # (E, 3)
    e = rows.shape[0]
    blk = rows[:, 0].clamp(0, ks.shape[0] - 1)  # rows past the count may hold anything
    slots = (blk[:, None] * block_size + torch.arange(block_size, device=blk.device)).reshape(-1)
    keys, values = dequantized_layer(kc[slots], ks[blk], kz[blk], vc[slots], vs[slots], vz[slots], block_size)
    local = table.clone()
    local[1:, 0] = torch.arange(e, device=table.device, dtype=table.dtype)  # row i reads block i
    return paged_context_reference(q, keys, values, local, inv_freq, block_size, scale)


def dequantized_layer(
    kc: torch.Tensor,
    ks: torch.Tensor,
    kz: torch.Tensor,
    vc: torch.Tensor,
    vs: torch.Tensor,
    vz: torch.Tensor,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 keys and values (slots, kv_heads, D) of one layer's int4 pool views: codes (slots,
    kv_heads, D/2), key scale/zero (blocks, kv_heads, D), value scale/zero (slots, kv_heads, 2):
    :mod:`~ragcompress.kv.kernels.quant_format`'s dequantization with slots as its tokens (key
    groups of one block, value groups of half a head). Codes (slots, kv_heads, D): int8."""
    from ragcompress.kv.kernels.quant_format import dequantize_keys, dequantize_values

    def heads(t: torch.Tensor) -> torch.Tensor:  # slots-first -> quant_format's heads-first
        return t.transpose(0, 1)

    d = ks.shape[-1]
    bits = 4 if kc.shape[-1] < d else 8
    keys = dequantize_keys(heads(kc), heads(ks), heads(kz), bits, block_size)
    values = dequantize_values(heads(vc), heads(vs), heads(vz), bits, d // 2)
    return heads(keys), heads(values)
