"""Does a paged engine built for the longest context cost the short ones? ``bench ttft`` builds
one paged engine (and pool) for its longest context and places every row's chunks in it; its
placed column read 0.3-0.4 ms over the in-buffer one at 1K (``../ttft_lead_h200/``) where
``../ttft_paged_gap_h200/`` (an engine per context) read +0.04. Per context, the same chunks:
in the buffer, placed in an engine sized for that context, placed in one sized for 128K (as
the bench builds it); wall ms by CUDA events, and the kernels of both placed requests under the
profiler, by category.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_paged_capacity_h200/capacity_ab.py \
        --shape llama3-8b --contexts 1024,10240,32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import triton
from ragcompress_bench.ttft_paged import build_paged
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock, alternating

from ragcompress.kv.fast.pool import ChunkPool

_spec = importlib.util.spec_from_file_location(
    "paged_gap", Path(__file__).parents[1] / "ttft_paged_gap_h200" / "paged_gap.py"
)
assert _spec is not None and _spec.loader is not None
gap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gap)

LONGEST = 131072


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--contexts", default="1024,10240,32768")
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    torch.manual_seed(0)
    model = build_model(a.shape, "cuda", torch.bfloat16)
    clock = Clock(torch.device("cuda"), 3, 20)
    args = SimpleNamespace(passage_tokens=512, question_tokens=a.question_tokens, new_tokens=4)
    big: Any = None
    for ctx in (int(c) for c in a.contexts.split(",")):
        r = resident(model, ctx, a.question_tokens)
        if big is None:  # as bench ttft: one engine for the longest context, its step shared
            big = build_paged(model, r.fast, [LONGEST], args, ChunkPool)
        small = build_paged(model, r.fast, [ctx], args, ChunkPool)
        engines = {"placed, engine for this context": small, f"placed, engine for {LONGEST}": big}
        runs: dict[str, Any] = {"in the buffer": r.warm}
        for name, eng in engines.items():
            eng.load(r.prefix, r.chunks)  # the chunks enter its pool once

            def placed(eng: Any = eng, r: Any = r) -> int:
                eng.load(r.prefix, r.chunks)
                return int(eng.prefill([r.question])[0])

            runs[name] = placed
        ms = alternating(runs, clock, 3)
        print(f"\n## {a.shape}, {ctx} tokens ({len(r.chunks)} chunks)\n")
        print("| request | wall ms (CUDA events, median of 3 x 20, alternating) |\n|---|---|")
        for name, v in ms.items():
            print(f"| {name} | {v:.3f} |")
        prof = {name: gap.kernels(runs[name], 20) for name in engines}
        print("\n| kernels by category, ms a request | " + " | ".join(engines) + " |\n|---|---|---|")
        cats = sorted({c for p in prof.values() for c in p[0]})
        for c in cats:
            print(f"| {c} | " + " | ".join(f"{prof[n][0].get(c, 0.0) / 1e3:.3f}" for n in engines) + " |")
        for name, (_, rows) in prof.items():
            print(f"\n{name}: top kernels\n\n| kernel | µs a request | launches | µs a launch |")
            print("|---|---|---|---|")
            for us, key, n in sorted(rows, reverse=True)[:8]:
                print(f"| `{key}` | {us:.0f} | {n:.0f} | {us / max(n, 1):.1f} |")
        for eng in engines.values():
            eng.release()
        del small, r, runs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
