"""The own pass + merge launch before and after a change to it, alternating in one process: the
library's ``merge_with_own`` against the one of the tree in ``DIR``. The launch alone on the
warm step's shapes (``../ttft_own_merge_h200/``'s case): 32 question tokens, 16 context
partials (the last empty), own regions of 36 / 64 / 288 slots with 32 used, and a local window
of 4. It ran twice, each on the tree of one change (both reverted since): here, every load of a
program in flight at once; in ``../ttft_own_merge_heads_h200/``, one program per (token, KV
head).

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_own_merge_loads_h200/own_merge_loads_ab.py --before DIR
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <the same> --before DIR --check-cpu

``DIR`` holds the tree before the change (its ``ragcompress/kv/fast/_merge.py`` is the
"before" kernel). µs by ``do_bench_cudagraph``, best of 5 alternating rounds. A diagnostic
script; not part of the library.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
import triton
from ragcompress_bench.records import RESULTS, record_module

from ragcompress.kv.fast._merge import merge_with_own

own = record_module("own_merge_ab", RESULTS / "ttft_own_merge_h200" / "own_merge_ab.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="root of the tree before the change")
    ap.add_argument("--check-cpu", action="store_true", help="interpreted, fp32: after equals before")
    args = ap.parse_args()
    old = record_module("before_merge", args.before / "ragcompress" / "kv" / "fast" / "_merge.py").merge_with_own
    if args.check_cpu:
        for t, region, used, window in ((5, 12, 9, None), (5, 40, 37, None), (6, 40, 37, 7), (3, 20, 3, 2)):
            c = own.case(t, region, used, 4, 2, 16, 3, "cpu", torch.float32)
            torch.testing.assert_close(merge_with_own(*c, 0.3, window), old(*c, 0.3, window), atol=1e-5, rtol=1e-5)
        print("cpu check: after equals before")
        return
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | region | window | before µs | after µs | after / before | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, (h, kvh, d, segs) in own.SHAPES.items():
        for region, window in ((36, None), (64, None), (288, None), (64, 4)):
            c = own.case(32, region, 32, h, kvh, d, segs, "cuda", torch.bfloat16)
            fns = {"before": partial(old, *c, d**-0.5, window), "after": partial(merge_with_own, *c, d**-0.5, window)}
            diff = float((fns["after"]().float() - fns["before"]().float()).abs().max())
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(5):
                for k, fn in fns.items():
                    best[k] = min(best[k], do_bench_cudagraph(fn) * 1e3)
            b, a = best["before"], best["after"]
            print(f"| {name} | {region} | {window} | {b:.2f} | {a:.2f} | {a / b:.3f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
