"""A floor on the context segments' length at short contexts, measured end to end: the warm
request (chunks in the buffer; ``bench ttft``'s ``ragcompress_warm_ms``) with
``StepMeta.refresh`` cutting the filled context into ``ceil(ctx_len / S)``-key segments (the
library) or into segments of at least ``FLOOR`` keys (fewer busy segments at short contexts: the
rest carry no key, their context programs exit at once and the merge skips them). Each variant
is its own engine, its graphs captured under its cut; the engines share the model's weights and
hold the same chunks; rounds alternate.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_seg_floor_h200/seg_floor_ab.py \
        --shape llama3-8b --contexts 1024,4096,10240 --floors 0,256,512,1024

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model

from ragcompress.kv.fast import step_meta

_LIBRARY = step_meta.StepMeta.refresh
FLOOR = 0  # keys; read when a graph is captured


def floored_refresh(self: step_meta.StepMeta) -> None:
    """The library's cut with segments of at least FLOOR keys (at most ``max_seg``)."""
    n = self.splits
    seg = torch.div(self.ctx_len + (n - 1), n, rounding_mode="floor")
    self.seg_len.copy_(seg.clamp(min=min(FLOOR, self.max_seg), max=self.max_seg))
    self.seg_start.copy_(self._iota * self.seg_len)
    self.cu_k_ctx[:n].copy_(self.seg_start)
    self.ctx_used.copy_(torch.minimum((self.ctx_len - self.seg_start).clamp_min(0), self.seg_len))


def warm_ms(r: object, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        r.warm()  # type: ignore[attr-defined]
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def main() -> None:
    global FLOOR
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--contexts", default="1024,4096,10240")
    ap.add_argument("--floors", default="0,256,512,1024")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    torch.manual_seed(0)
    model = build_model(a.shape, "cuda", torch.bfloat16)
    floors = [int(f) for f in a.floors.split(",")]
    print("\n| context | " + " | ".join(f"floor {f}" if f else "library" for f in floors) + " | first tokens equal |")
    print("|---|" + "---|" * (len(floors) + 1))
    for ctx in (int(c) for c in a.contexts.split(",")):
        engines = {}
        for f in floors:
            FLOOR = f
            step_meta.StepMeta.refresh = floored_refresh if f else _LIBRARY  # type: ignore[method-assign]
            engines[f] = resident(model, ctx, 32, seed=1)
        step_meta.StepMeta.refresh = _LIBRARY  # type: ignore[method-assign]
        tokens = {f: r.warm() for f, r in engines.items()}
        times: dict[int, list[float]] = {f: [] for f in floors}
        for _ in range(a.rounds):
            for f, r in engines.items():
                times[f] += warm_ms(r, 10)
        med = {f: statistics.median(t) for f, t in times.items()}
        cells = " | ".join(f"{med[f]:.3f}" + (f" ({med[f] / med[0]:.3f})" if f else "") for f in floors)
        print(f"| {ctx} | {cells} | {len(set(tokens.values())) == 1} |", flush=True)
        del engines
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
