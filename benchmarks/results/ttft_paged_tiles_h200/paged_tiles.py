"""Why the paged context pass runs ~1.5x the contiguous one over the same keys, tried: tiles of
one chunk's run (128 keys from two consecutive blocks) instead of one 64-key block a tile, and a
split's table rows held in registers (no load on the path to a tile's key address), against the
library's paged kernel and the contiguous kernel over the same keys copied in context order.

The pool as a fresh one fills it: each item (a 64-token prefix, then 512-token chunks) one run
of consecutive blocks, the runs in shuffled pool order, one delta per item. One layer, 32
question tokens. "slot" kernels read a table of ``[first slot, keys used, delta]`` rows, a row
per tile of ``TN`` keys inside one run.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_tiles_h200/paged_tiles.py          # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                     # CPU

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E, _tile, context_pass
from ragcompress.kv.fast._online import partials, store_partial
from ragcompress.kv.fast._paged import _entries, paged_context, question_rows
from ragcompress.kv.fast.waves import CONTIGUOUS, PAGED, Tiling
from ragcompress.models.rope import rotate

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}


@triton.jit
def _slot_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    TN: tl.constexpr, BLOCK_M: tl.constexpr, REG: tl.constexpr, MAXT: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, NG, 0, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    e0, e1 = _entries(tab_ptr, seg, S)
    n = tl.arange(0, TN).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    a = tl.zeros([BLOCK_M, D], k_ptr.dtype.element_ty)
    last = tl.full((), 0, tl.int32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    if REG:
        t = tl.arange(0, MAXT)
        live = e0 + t < e1
        base = tab_ptr + 3 * (1 + e0 + t)
        slot_v = tl.load(base, mask=live, other=0)
        used_v = tl.load(base + 1, mask=live, other=0)
        delta_v = tl.load(base + 2, mask=live, other=0)
        for i in range(0, e1 - e0):
            sel = t == i
            slot0 = tl.sum(tl.where(sel, slot_v, 0), axis=0).to(tl.int64)
            used = tl.sum(tl.where(sel, used_v, 0), axis=0)
            delta = tl.sum(tl.where(sel, delta_v, 0), axis=0)
            if (delta != last) | (i == 0):
                qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                ang = delta.to(tl.float32) * freq
                a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(
                    k_ptr.dtype.element_ty
                )
                last = delta
            m_i, l_i, acc = _tile(
                a, kb, vb, slot0 + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D
            )
    else:
        row = tab_ptr + 3 * (1 + tl.minimum(e0, e1 - 1))
        slot0 = tl.load(row).to(tl.int64)
        used = tl.where(e0 < e1, tl.load(row + 1), 0)
        delta = tl.load(row + 2)
        for e in range(e0, e1):
            nrow = tab_ptr + 3 * (1 + tl.minimum(e + 1, e1 - 1))
            nslot = tl.load(nrow).to(tl.int64)
            nused = tl.where(e + 1 < e1, tl.load(nrow + 1), 0)
            ndelta = tl.load(nrow + 2)
            if (delta != last) | (e == e0):
                qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                ang = delta.to(tl.float32) * freq
                a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(
                    k_ptr.dtype.element_ty
                )
                last = delta
            m_i, l_i, acc = _tile(
                a, kb, vb, slot0 + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D
            )
            slot0, used, delta = nslot, nused, ndelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def slot_pass(
    q: Any, pk: Any, pv: Any, tab: Any, inv: Any, tn: int, reg: bool, cfg: tuple[int, int, int, int]
) -> Any:
    """(o, lse, splits) of the slot kernel; ``cfg`` = (rows a program, warps, stages, programs an SM)."""
    block_m, warps, stages, per_sm = cfg
    d, kvh = q.shape[2], pk.shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    splits = Tiling(rows=block_m, per_sm=per_sm, stages=stages).splits(sms, ng, kvh, int(tab.shape[0]) - 1)
    g, ng, o, lse = partials("slot_pass", q, pk, pv, splits)
    maxt = triton.next_power_of_2(max(16, -(-(int(tab.shape[0]) - 1) // splits)))
    _slot_kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, tab, inv, o, lse, pk.stride(0), pv.stride(0), ng, d**-0.5 * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, TN=tn, BLOCK_M=block_m, REG=reg, MAXT=maxt,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse, splits


def case(
    ctx: int, n: int, h: int, kvh: int, d: int, dev: str, dt: Any, bs: int = 64, chunk: int = 512
) -> dict[str, Any]:
    """Queries, a pool filled run by run in shuffled order, and the tables: the library's block
    table, slot tables of 64 and 128 keys a tile, and the keys in context order rotated by
    their deltas (for the contiguous kernel)."""
    torch.manual_seed(0)
    sizes = [64] + [min(chunk, ctx - 64 - i) for i in range(0, ctx - 64, chunk)]
    blocks = [-(-s // bs) for s in sizes]
    order = torch.randperm(len(sizes)).tolist()
    first, b = {}, 0
    for i in order:
        first[i], b = b, b + blocks[i]
    q = torch.randn(n, h, d, device=dev, dtype=dt)
    pk = torch.randn(b * bs, kvh, d, device=dev, dtype=dt)
    pv = torch.randn(b * bs, kvh, d, device=dev, dtype=dt)
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    pos, deltas = 0, []
    for i, s in enumerate(sizes):
        deltas.append(pos - (0 if i == 0 else 64))
        pos += s

    def rows(tn: int, slots: bool) -> Any:
        out = []
        for i, s in enumerate(sizes):
            for j in range(-(-s // tn)):
                start = first[i] * bs + j * tn
                out.append((start if slots else start // bs, min(tn, s - j * tn), deltas[i]))
        return torch.tensor([(len(out), 0, 0), *out], dtype=torch.int32, device=dev)

    idx = torch.cat([torch.arange(first[i] * bs, first[i] * bs + s, device=dev) for i, s in enumerate(sizes)])
    dl = torch.cat([torch.full((s,), deltas[i], device=dev) for i, s in enumerate(sizes)])
    kc = rotate(pk[idx].transpose(0, 1), dl, inv).transpose(0, 1).contiguous()
    return {"q": q, "pk": pk, "pv": pv, "inv": inv, "blocks": rows(bs, False), "slots64": rows(64, True),
            "slots128": rows(128, True), "kc": kc, "vc": pv[idx].contiguous(), "ctx": ctx}  # fmt: skip


def merged(o: Any, lse: Any, splits: int, n: int, h: int, kvh: int, d: int) -> Any:
    g = h // kvh
    o = o.float().view(splits, n, g, kvh, d).permute(0, 1, 3, 2, 4).reshape(splits, n, h, d)
    lse = lse.view(splits, kvh, n, g).permute(0, 2, 1, 3).reshape(splits, n, h)
    return (torch.softmax(lse, 0)[..., None] * o).sum(0)


def contiguous(c: dict[str, Any], tiling: Tiling = CONTIGUOUS) -> tuple[Any, Any, int]:
    q, kc, kvh = c["q"], c["kc"], c["kc"].shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    sp = tiling.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // sp // 128) * 128
    start = torch.arange(sp, device=q.device, dtype=torch.int32) * per
    used = (c["ctx"] - start).clamp(0, per).to(torch.int32)
    o, lse = context_pass(q, kc, c["vc"], start, used, q.shape[2] ** -0.5, tiling)
    return o, lse, sp


def library(c: dict[str, Any]) -> tuple[Any, Any, int]:
    q, pk, kvh = c["q"], c["pk"], c["pk"].shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    sp = PAGED.splits(sms, ng, kvh, int(c["blocks"].shape[0]) - 1)
    o, lse = paged_context(q, pk, c["pv"], c["blocks"], c["inv"], 64, sp, q.shape[2] ** -0.5)
    return o, lse, sp


CONFIGS = ((64, 4, 3, 2), (128, 8, 3, 1), (64, 4, 2, 2), (64, 4, 3, 1))


def contenders() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("library paged (blocks of 64)", library),
        ("contiguous, keys in context order", contiguous),
    ]
    for tn, tab in ((64, "slots64"), (128, "slots128")):
        for reg in (False, True):
            for cfg in CONFIGS:
                rows = "in registers" if reg else "one ahead"
                name = f"slot tiles of {tn}, rows {rows}, {'/'.join(map(str, cfg))}"
                out.append(
                    (
                        name,
                        lambda c, tn=tn, tab=tab, reg=reg, cfg=cfg: slot_pass(
                            c["q"], c["pk"], c["pv"], c[tab], c["inv"], tn, reg, cfg
                        ),
                    )
                )
    return out


def check_cpu() -> None:
    c = case(64 + 512 * 3 + 100, 3, 4, 2, 16, "cpu", torch.float32, chunk=512)
    h, kvh, d = 4, 2, 16
    want = merged(*library(c), 3, h, kvh, d)
    for name, fn in contenders():
        if "contiguous" in name or "128 rows" in name:
            continue  # the interpreter runs 64-row programs quickly enough
        o, lse, sp = fn(c)
        torch.testing.assert_close(merged(o, lse, sp, 3, h, kvh, d), want, atol=1e-4, rtol=1e-4)
    o, lse, sp = contiguous(c)
    torch.testing.assert_close(merged(o, lse, sp, 3, h, kvh, d), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every contender's partials merge to the library's")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for ctx in (32768, 131072, 10240):
        for shape, (h, kvh, d) in SHAPES.items():
            c = case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16)
            o, lse, sp = library(c)
            ref = merged(o, lse, sp, 32, h, kvh, d)
            print(f"\n## {shape}, {ctx} keys (slot configs: rows/warps/stages/programs an SM)\n")
            print("| contender | splits | µs | rel err vs library |\n|---|---|---|---|")
            for name, fn in contenders():
                try:
                    o, lse, sp = fn(c)
                    err = float((merged(o, lse, sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                    us = do_bench_cudagraph(lambda fn=fn, c=c: fn(c)) * 1e3
                    print(f"| {name} | {sp} | {us:.1f} | {err:.1e} |", flush=True)
                except Exception as exc:  # out of resources at a configuration
                    print(f"| {name} | | failed: {type(exc).__name__} {str(exc)[:80]} | |", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
