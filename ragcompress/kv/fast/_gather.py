"""Triton kernels: write EVERY chunk of a request into the static buffer in one launch per form.

One launch per chunk costs the host ~30 µs (bf16) to ~120 µs (the quantized wrapper) each, so
64 chunks at 32K spent more time launching than the GPU spent copying. Here a table with one
row per :class:`~ragcompress.kv.fast.rows.DenseRows` / :class:`~ragcompress.kv.fast.rows.QuantizedRows`
(where its tensors are, how many rows, where they go, which position delta) drives one launch:
program ``(entry, block)`` rotates its block of keys by the entry's ``delta * inv_freq``
(cos/sin computed in the program: one row of transcendentals per program) and stores keys
and values at their destination rows.

Chunk tensors live in separate allocations; the table holds their element offsets from one
base tensor of the same dtype (``(ptr - base_ptr) / itemsize``), so a program reaches any
chunk through ``base + offset`` without pointer casts.

Destination: the buffer's context (capacity, layers, kv_heads, head_dim), contiguous. The
torch twin, which the tests hold these kernels to, is :mod:`ragcompress.kv.fast.gather_reference`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl

# the quantized rows' int4/int8 loads and dequantization are the per-chunk kernel's own
from ragcompress.kv.fast.rows import DENSE_FIELDS, _offset
from ragcompress.kv.kernels.dequant_rope import _dequant, _halves

if TYPE_CHECKING:
    from ragcompress.kv.fast.rows import GatherRows
    from ragcompress.kv.fast.tables import Rotaries

__all__ = ["DENSE_FIELDS", "QUANT_FIELDS", "gather", "gather_dense", "gather_quantized"]

# table columns (the dense ones live with the host code that fills them)
QUANT_FIELDS = ("kc", "ks", "kz", "vc", "vs", "vz", "tokens", "dst_token", "delta", "heads", "head0")


@triton.jit
def _gather_dense_kernel(
    base, dst_k, dst_v, table, freq_ptr, tab_ptr, KVH, LAYERS,
    HALF: tl.constexpr, BLOCK_R: tl.constexpr, NF: tl.constexpr, NT: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    row = table + c * NF
    k_off = tl.load(row)
    v_off = tl.load(row + 1)
    rows = tl.load(row + 2)
    dst_row = tl.load(row + 3)
    delta = tl.load(row + 4).to(tl.float32)
    run = tl.load(row + 5)
    stride = tl.load(row + 6)
    r = blk * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    i = tl.arange(0, HALF)
    m = (r < rows)[:, None]
    D: tl.constexpr = 2 * HALF
    src = r[:, None] * D + i[None, :]
    drow = dst_row + (r % run) * stride + r // run
    dst = drow[:, None] * D + i[None, :]
    ang0 = delta * tl.load(freq_ptr + i)
    cs = tl.cos(ang0)[None, :]
    sn = tl.sin(ang0)[None, :]
    if NT > 1:  # NT distinct tables (T, HALF): cos/sin once per table, picked by each row's layer
        tab = tl.load(tab_ptr + (drow // KVH) % LAYERS, mask=r < rows, other=0)[:, None]
        cs = tl.broadcast_to(cs, (BLOCK_R, HALF))
        sn = tl.broadcast_to(sn, (BLOCK_R, HALF))
        for ti in tl.static_range(1, NT):
            ang = delta * tl.load(freq_ptr + ti * HALF + i)
            cs = tl.where(tab == ti, tl.cos(ang)[None, :], cs)
            sn = tl.where(tab == ti, tl.sin(ang)[None, :], sn)
    x1 = tl.load(base + k_off + src, mask=m).to(tl.float32)
    x2 = tl.load(base + k_off + src + HALF, mask=m).to(tl.float32)
    v1 = tl.load(base + v_off + src, mask=m)
    v2 = tl.load(base + v_off + src + HALF, mask=m)
    tl.store(dst_k + dst, (x1 * cs - x2 * sn).to(dst_k.dtype.element_ty), mask=m)
    tl.store(dst_k + dst + HALF, (x2 * cs + x1 * sn).to(dst_k.dtype.element_ty), mask=m)
    tl.store(dst_v + dst, v1, mask=m)
    tl.store(dst_v + dst + HALF, v2, mask=m)


def gather_dense(
    base: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    table: torch.Tensor,
    inv_freq: torch.Tensor,
    max_rows: int,
    head_dim: int,
    index: torch.Tensor | None = None,
    kv_heads: int = 1,
) -> None:
    """table (C, 7) int64 on the device: key/value element offsets from ``base``, rows of
    head_dim, first destination row, delta, run, stride (see :class:`~ragcompress.kv.fast.rows.DenseRows`);
    ``max_rows`` = largest ``rows`` (sets the grid). ``inv_freq``: (head_dim // 2,) for every
    layer, or the distinct tables (T, head_dim // 2) with ``index`` (layers,) int32 each
    destination layer's table (``kv_heads`` heads per layer tell a row's layer)."""
    freqs = inv_freq.reshape(-1, head_dim // 2)
    # rows per program scaled to the head size, as the quantized kernel's tokens are: a block of
    # 64 rows of 256 channels (Gemma 3), with one cos/sin tile per row for several tables,
    # holds ~4x the registers of Llama's 64 x 128 (measured: the dense 32K write of Gemma 3 12B
    # took ~60 ms on an H200, ~10x its bytes over bandwidth, while the quantized one did not)
    block_r = max(8, (4096 if freqs.shape[0] == 1 else 2048) // (head_dim // 2))
    grid: Any = (table.shape[0], triton.cdiv(max_rows, block_r))
    tab = index if index is not None else torch.zeros(1, dtype=torch.int32, device=table.device)
    _gather_dense_kernel[grid](
        base, dst_k, dst_v, table, freqs, tab, kv_heads, tab.numel(), HALF=head_dim // 2, BLOCK_R=block_r,
        NF=len(DENSE_FIELDS), NT=freqs.shape[0], num_warps=4,
    )  # fmt: skip


@triton.jit
def _gather_quant_kernel(
    codes, scales, dst_k, dst_v, table, freq_ptr, tab_ptr, LH, KVH,
    HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BITS: tl.constexpr,
    GROUP: tl.constexpr, NF: tl.constexpr,
):  # fmt: skip
    # program (entry, source head lh, token block), lh < the entry's heads; source head lh goes
    # to destination head head0 + lh of the LH = layers * kv_heads stacked heads. The
    # quantized layout is :mod:`ragcompress.kv.kernels.quant_format` (layers stacked as heads).
    c = tl.program_id(0).to(tl.int64)
    lh = tl.program_id(1).to(tl.int64)
    row = table + c * NF
    kc = codes + tl.load(row)
    ks = scales + tl.load(row + 1)
    kz = scales + tl.load(row + 2)
    vc = codes + tl.load(row + 3)
    vs = scales + tl.load(row + 4)
    vz = scales + tl.load(row + 5)
    n = tl.load(row + 6)
    dst_tok = tl.load(row + 7)
    delta = tl.load(row + 8).to(tl.float32)
    heads = tl.load(row + 9)
    head0 = tl.load(row + 10)
    t = tl.program_id(2).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    j = tl.arange(0, BLOCK_D)
    jm = j < HALF
    live = tl.where(lh < heads, n, 0)  # tokens this program writes: none past the entry's heads
    m = (t < live)[:, None] & jm[None, :]
    tt = t[:, None]
    j1 = j[None, :]
    j2 = j1 + HALF
    D: tl.constexpr = 2 * HALF
    DC: tl.constexpr = HALF if BITS == 4 else D
    VG: tl.constexpr = (D + GROUP - 1) // GROUP

    # keys: per-channel groups of GROUP tokens; values: per-token groups of GROUP channels
    k1, k2 = _halves(kc + (lh * n + tt) * DC, j1, j2, m, BITS)
    sk = (lh * ((n + GROUP - 1) // GROUP) + tt // GROUP) * D
    k1, k2 = _dequant(k1, ks, kz, sk + j1, m), _dequant(k2, ks, kz, sk + j2, m)
    # freq_ptr: (layers, HALF); destination head head0 + lh is in layer (head0 + lh) // KVH
    # destination head head0 + lh is in layer (head0 + lh) // KVH, whose table is tab_ptr[layer]
    # (a program past the entry's heads writes nothing; its layer may lie past the index: 0)
    layer = tl.where(lh < heads, (head0 + lh) // KVH, 0)
    ang = delta * tl.load(freq_ptr + tl.load(tab_ptr + layer) * HALF + j, mask=jm, other=0.0)
    cs = tl.cos(ang)[None, :]
    sn = tl.sin(ang)[None, :]
    ob = ((dst_tok + tt) * LH + head0 + lh) * D
    tl.store(dst_k + ob + j1, (k1 * cs - k2 * sn).to(dst_k.dtype.element_ty), mask=m)
    tl.store(dst_k + ob + j2, (k2 * cs + k1 * sn).to(dst_k.dtype.element_ty), mask=m)
    v1, v2 = _halves(vc + (lh * n + tt) * DC, j1, j2, m, BITS)
    sv = (lh * n + tt) * VG
    v1, v2 = _dequant(v1, vs, vz, sv + j1 // GROUP, m), _dequant(v2, vs, vz, sv + j2 // GROUP, m)
    tl.store(dst_v + ob + j1, v1.to(dst_v.dtype.element_ty), mask=m)
    tl.store(dst_v + ob + j2, v2.to(dst_v.dtype.element_ty), mask=m)


def gather_quantized(
    codes: torch.Tensor,
    scales: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    table: torch.Tensor,
    inv_freq: torch.Tensor,
    stacked_heads: int,
    max_heads: int,
    max_tokens: int,
    head_dim: int,
    bits: int,
    group: int,
    index: torch.Tensor | None = None,
    kv_heads: int | None = None,
) -> None:
    """table (C, 11) int64 on the device: element offsets of the six quantized tensors (codes
    from ``codes``, scales/zeros from ``scales``), tokens, first destination token, delta,
    source heads, first destination head; ``stacked_heads`` = layers * kv_heads of the
    destination; ``max_heads``/``max_tokens``: the largest entry (set the grid).
    ``inv_freq``: (head_dim // 2,) for every layer, or the distinct tables (T, head_dim // 2)
    with ``index`` (layers,) int32 each layer's table and ``kv_heads`` heads per layer."""
    if index is None:  # one table: every head reads row 0
        index, kv_heads = torch.zeros(1, dtype=torch.int32, device=table.device), stacked_heads
    assert kv_heads is not None
    half = head_dim // 2
    block_n = max(16, min(128, 4096 // triton.next_power_of_2(half)))
    grid: Any = (table.shape[0], max_heads, triton.cdiv(max_tokens, block_n))
    _gather_quant_kernel[grid](
        codes, scales, dst_k, dst_v, table, inv_freq.contiguous(), index, stacked_heads, kv_heads,
        HALF=half, BLOCK_D=triton.next_power_of_2(half), BLOCK_N=block_n, BITS=bits, GROUP=group,
        NF=len(QUANT_FIELDS), num_warps=4,
    )  # fmt: skip


def gather(rows: GatherRows, rotary: Rotaries) -> None:
    """Write every entry of ``rows`` into its buffer's context: one launch for the dense
    entries, one per (bits, group, dtypes) of the quantized ones. Needs full-width rotary and
    a power-of-two head_dim (the caller checks)."""
    from ragcompress.kv.fast.tables import layer_tables

    buffer = rows.buffer
    dev = buffer.ctx_keys.device
    d = buffer.head_dim
    freq, index = layer_tables(rotary, buffer.layers, dev)
    dense = rows.dense_table()
    if dense is not None:
        dense_table, most = dense
        gather_dense(
            buffer.ctx_keys, buffer.ctx_keys, buffer.ctx_values, _upload(dense_table, dev), freq, most, d,
            index, buffer.kv_heads,
        )  # fmt: skip
    kinds: dict[tuple[Any, ...], list[Any]] = {}
    for q in rows.quantized:
        kinds.setdefault((q.kv.bits, q.kv.group, q.kv.key_codes.dtype, q.kv.key_scale.dtype), []).append(q)
    for (bits, group, _, _), entries in kinds.items():
        codes, scales = entries[0].kv.key_codes, entries[0].kv.key_scale
        table = []
        for q in entries:
            kc, ks, kz, vc, vs, vz = q.kv.tensors()
            offsets = [_offset(kc, codes), *(_offset(t, scales) for t in (ks, kz))]
            offsets += [_offset(vc, codes), *(_offset(t, scales) for t in (vs, vz))]
            table.append([*offsets, q.kv.num_tokens, q.slot, q.delta, q.kv.kv_heads, q.head0])
        gather_quantized(
            codes, scales, buffer.ctx_keys, buffer.ctx_values, _upload(table, dev), freq,
            buffer.layers * buffer.kv_heads, max(r[9] for r in table), max(r[6] for r in table), d,
            bits, group, index, buffer.kv_heads,
        )  # fmt: skip


def _upload(rows: list[list[int]] | torch.Tensor, dev: torch.device) -> torch.Tensor:
    """The table on the device without blocking the host: pinned (cached by torch's host
    allocator, which keeps a block until the copy that reads it is done), then async."""
    table = rows if isinstance(rows, torch.Tensor) else torch.tensor(rows, dtype=torch.long)
    if dev.type != "cuda":
        return table.to(dev)
    return table.pin_memory().to(dev, non_blocking=True)
