"""The paged kernel over a ragged batch (each question its own table), swept: rows a program,
programs an SM and stages, at batch 1/8/32/64 with 32 question tokens (the prefill) and 1 (a
decode step), Llama-3-8B and Qwen2.5-7B heads, 10K keys a question from a pool twice that.

``waves.PAGED`` (64-row programs, two an SM) won at batch 1, where the pass waits on loads.
A ragged prefill of 32 questions has 8 x 32 x 2 programs a split before any split: compute
bound, where 128-row programs won for the contiguous pass. This says where the split should
change.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_ragged_h200/ragged_sweep.py               # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                      # CPU

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import random
from functools import partial
from typing import Any

import torch

from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.paged import paged_context_reference, per_question
from ragcompress.kv.fast.waves import Tiling

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}
TILINGS = ((64, 2, 3), (128, 1, 3), (128, 2, 3), (64, 1, 3))


def tables(b: int, ctx: int, passage: int, bs: int, dev: Any, seed: int = 0) -> Any:
    """(b, 1 + rows, 3) int32: question i reads a random ordered choice of 2 * ctx / passage
    passages (each ``passage`` tokens, consecutive blocks) filling ``ctx``, at its own deltas."""
    rng = random.Random(seed)
    per = passage // bs
    count = 2 * ctx // passage
    rows = []
    for _ in range(b):
        picked = rng.sample(range(count), ctx // passage)
        rows.append([(p * per + j, bs, 64 + k * passage) for k, p in enumerate(picked) for j in range(per)])
    out = torch.zeros(b, 1 + len(rows[0]), 3, dtype=torch.int32)
    for i, r in enumerate(rows):
        out[i, 0, 0] = len(r)
        out[i, 1:] = torch.tensor(r, dtype=torch.int32)
    return out.to(dev)


def run(q: Any, pk: Any, pv: Any, tab: Any, inv: Any, bs: int, sms: int, t: Tiling) -> Any:
    n, h, d = q.shape
    kvh = pk.shape[1]
    sp = t.splits(sms, n * (h // kvh), kvh, tab.shape[1] - 1)
    return sp, paged_context(q, pk, pv, tab, inv, bs, sp, d**-0.5, tiling=t)


def merged(o: Any, lse: Any, splits: int, n: int, h: int, kvh: int, d: int) -> Any:
    g = h // kvh
    o = o.float().view(splits, n, g, kvh, d).permute(0, 1, 3, 2, 4).reshape(splits, n, h, d)
    lse = lse.view(splits, kvh, n, g).permute(0, 2, 1, 3).reshape(splits, n, h)
    return (torch.softmax(lse, 0)[..., None] * o).sum(0)


def check_cpu() -> None:
    h, kvh, d, bs = 4, 2, 32, 16
    pk, pv = torch.randn(4 * 64, kvh, d), torch.randn(4 * 64, kvh, d)
    inv = 1.0 / (1e4 ** (torch.arange(0, d, 2).float() / d))
    tab = tables(3, 128, 32, bs, "cpu")
    for t_tok in (5, 1):
        q = torch.randn(3 * t_tok, h, d)
        want, _ = per_question(
            lambda qb, tb: paged_context_reference(qb, pk, pv, tb, inv, bs, d**-0.5), q, tab
        )
        for bm, per, st in TILINGS[:2]:
            sp, (o, lse) = run(q, pk, pv, tab, inv, bs, 4, Tiling(bm, per, st))
            torch.testing.assert_close(merged(o, lse, sp, 3 * t_tok, h, kvh, d), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every tiling's partials merge to the per-question reference")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ctx, bs = 10240, 64
    for name, (h, kvh, d) in SHAPES.items():
        pk = torch.randn(2 * ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
        pv = torch.randn_like(pk)
        inv = (1.0 / (1e6 ** (torch.arange(0, d, 2, device="cuda").float() / d))).contiguous()
        print(f"\n## {name}, 10K keys a question")
        print(
            "| question tokens | batch | rows | an SM | stages | splits | us | us a question | max abs err |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for t_tok in (32, 1):
            for b in (1, 8, 32, 64):
                tab = tables(b, ctx, 512, bs, "cuda")
                q = torch.randn(b * t_tok, h, d, device="cuda", dtype=torch.bfloat16)
                ref = None
                for bm, per, st in TILINGS:
                    t = Tiling(bm, per, st)
                    sp, (o, lse) = run(q, pk, pv, tab, inv, bs, sms, t)
                    got = merged(o, lse, sp, b * t_tok, h, kvh, d)
                    ref = got if ref is None else ref
                    err = float((got - ref).abs().max())
                    us = do_bench_cudagraph(partial(run, q, pk, pv, tab, inv, bs, sms, t)) * 1e3
                    cells = (t_tok, b, bm, per, st, sp, f"{us:.1f}", f"{us / b:.2f}", f"{err:.1e}")
                    print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
