"""The warm request's host time, phase by phase (CPU perf_counter, GPU synchronized around
each phase), against the captured step replayed alone: what of ``bench ttft``'s warm column is
not the graph.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gaps_h200/host.py --shapes qwen2.5-7b

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock

from ragcompress.kv.fast.shapes import prefill_args


def phases(r, reps: int = 50) -> dict[str, float]:  # type: ignore[no-untyped-def]
    fast = r.fast
    out: dict[str, list[float]] = {}
    for _ in range(reps):
        torch.cuda.synchronize()
        t = [time.perf_counter()]
        fast.load_reusing(r.prefix, r.chunks)
        t.append(time.perf_counter())
        tt = fast.bucket(len(r.question))
        fast.buffer.check_question(len(r.question), 0, 1)
        args = prefill_args([r.question], tt, fast.buffer, fast._starts())
        t.append(time.perf_counter())
        shape = fast._shape(1, tt)
        if hasattr(fast, "_uploader"):  # the tree before the staged arguments
            fast._uploader(shape.args, torch.from_numpy(args))
        else:
            shape.put(args)
        t.append(time.perf_counter())
        shape.graph.replay()
        t.append(time.perf_counter())
        torch.cuda.synchronize()
        t.append(time.perf_counter())
        int(shape.tokens[0])
        t.append(time.perf_counter())
        names = ["load_reusing", "bucket + check + prefill_args", "shape lookup + upload", "graph.replay() (CPU)", "until the GPU is done", "int(token) after that"]
        for i, nm in enumerate(names):
            out.setdefault(nm, []).append((t[i + 1] - t[i]) * 1e6)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-7b")
    ap.add_argument("--context", type=int, default=32768)
    a = ap.parse_args()
    clock = Clock(torch.device("cuda"), 3, 50)
    for s in a.shapes.split(","):
        torch.manual_seed(0)
        model = build_model(s, "cuda", torch.bfloat16)
        r = resident(model, a.context, 32)
        warm = clock(r.warm)
        shape = r.fast._last
        replay = clock(shape.graph.replay)
        replay_tok = clock(lambda: int(shape.graph.replay() or shape.tokens[0]))
        full = clock(lambda: int(r.fast.prefill([r.question])[0]))
        print(f"\n## {s}, {a.context} keys (ms, CUDA events, median of 50)\n")
        print("| | ms |\n|---|---|")
        print(f"| warm request (bench's column: load_reusing + prefill + int(token)) | {warm:.3f} |")
        print(f"| prefill + int(token), no load_reusing | {full:.3f} |")
        print(f"| graph.replay() + int(token) | {replay_tok:.3f} |")
        print(f"| graph.replay() alone | {replay:.3f} |")
        print("\n| phase (CPU, synchronized before) | µs median |\n|---|---|")
        for k, v in phases(r).items():
            print(f"| {k} | {v:.1f} |")
        del r, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
