"""Ragged batches: the paged pass's split count from the whole batch's folded rows (the library
before `waves.Tiling.splits(..., questions=)`) against counting each question's own programs
(after), one layer, Llama-3-8B heads, 10K keys a question; decode (1 token) and prefill (32).

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_ragged_h200/splits_ab.py          # GPU

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.waves import PAGED

_spec = importlib.util.spec_from_file_location("ragged_sweep", Path(__file__).with_name("ragged_sweep.py"))
assert _spec is not None and _spec.loader is not None
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

h, kvh, d, ctx, bs = 32, 8, 128, 10240, 64
sms = torch.cuda.get_device_properties(0).multi_processor_count
pk = torch.randn(2 * ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
pv = torch.randn_like(pk)
inv = (1.0 / (1e6 ** (torch.arange(0, d, 2, device="cuda").float() / d))).contiguous()
print(torch.cuda.get_device_name())
print("| question tokens | batch | splits before | µs before | splits after | µs after | max abs diff |")
print("|---|---|---|---|---|---|---|")
for t in (1, 32):
    for b in (8, 32, 64):
        tab = sweep.tables(b, ctx, 512, bs, "cuda")
        q = torch.randn(b * t, h, d, device="cuda", dtype=torch.bfloat16)
        most = tab.shape[1] - 1
        old = PAGED.splits(sms, b * t * (h // kvh), kvh, most)
        new = PAGED.splits(sms, t * (h // kvh), kvh, most, questions=b)
        outs, times = [], []
        for sp in (old, new):
            run = partial(paged_context, q, pk, pv, tab, inv, bs, sp, d**-0.5)
            outs.append(sweep.merged(*run(), sp, b * t, h, kvh, d))
            times.append(do_bench_cudagraph(run) * 1e3)
        err = float((outs[0] - outs[1]).abs().max())
        print(f"| {t} | {b} | {old} | {times[0]:.1f} | {new} | {times[1]:.1f} | {err:.1e} |")
