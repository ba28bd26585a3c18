"""Where a host-tier request's time goes on the device and the host (issue #16, 32K).

``host_copy.py`` found the copies in pieces take 10.5 ms of copy engine at 32K while the request
takes 15.7: this script puts the request on one clock. Per request (median of 10), from an idle
device: host ms at which ``load`` returns, the flush starts and returns, and the prefill
returns; device ms (CUDA events from the request's start) at which the first and the last copy
run, and the step ends. Then a cProfile of 10 requests (load + prefill), top entries by
cumulative time. Same chunks as ``host_copy.py``.

    python3 benchmarks/results/ttft_host_copy_h200/host_timeline.py [--contexts 10240,32768]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "ttft_host_split_h200"))
from host_ab import chunks_for, engine
from ragcompress_bench.ttft_shapes import build_model

from ragcompress.kv.fast import FastGenerator, HostChunk
from ragcompress.kv.fast.stream import HostStream


class Timed(HostStream):
    """The streamer, with events around its copies and host times around its flush."""

    marks: ClassVar[dict[str, Any]] = {}

    def flush(self, join: bool = False) -> None:
        self.marks["flush_in"] = time.perf_counter()
        super().flush(join)
        self.marks["flush_out"] = time.perf_counter()

    def fetch(self, copies, i):  # type: ignore[no-untyped-def]
        if i == 0:
            self.marks["c0"] = torch.cuda.Event(enable_timing=True)
            self.marks["c0"].record()
        base = super().fetch(copies, i)
        if i == len(self.ranges) - 1:
            self.marks["c1"] = torch.cuda.Event(enable_timing=True)
            self.marks["c1"].record()
        return base


def timeline(eng: FastGenerator, prefix: Any, items: Any, question: list[int]) -> dict[str, float]:
    marks = Timed.marks
    marks.clear()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    e0.record()
    eng.load(prefix, items)
    t_load = time.perf_counter()
    tok = eng.prefill([question])
    t_queued = time.perf_counter()
    e1.record()
    int(tok[0])
    t_done = time.perf_counter()
    torch.cuda.synchronize()
    out = {
        "host_load_ms": (t_load - t0) * 1e3,
        "host_prefill_return_ms": (t_queued - t0) * 1e3,
        "host_token_ms": (t_done - t0) * 1e3,
        "device_end_ms": e0.elapsed_time(e1),
    }
    if "c0" in marks:
        out["host_flush_in_ms"] = (marks["flush_in"] - t0) * 1e3
        out["host_flush_out_ms"] = (marks["flush_out"] - t0) * 1e3
        out["device_copy_start_ms"] = e0.elapsed_time(marks["c0"])
        out["device_copy_end_ms"] = e0.elapsed_time(marks["c1"])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="10240,32768")
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model("llama3-8b", "cuda", torch.bfloat16)
    contexts = [int(c) for c in args.contexts.split(",")]
    base = FastGenerator(model, capacity=max(contexts), max_question=32, max_new_tokens=1, buckets=(32,))
    question = torch.randint(100, model.config.vocab_size, (32,)).tolist()
    for ctx in contexts:
        prefix, chunks = chunks_for(model, ctx)
        from ragcompress.kv.fast import QuantizedPackedChunk

        gpu = [QuantizedPackedChunk.from_chunk(c) for c in chunks]
        host = [HostChunk.from_chunk(c.to("cpu"), model.dtype) for c in chunks]
        del chunks
        eng = engine(model, base, Timed)
        for name, e, items in (("gpu", base, gpu), ("host", eng, host)):
            rows = [timeline(e, prefix, items, question) for _ in range(13)][3:]
            med = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
            print(json.dumps({"context": ctx, "chunks": name, **med}), flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(10):
            eng.load(prefix, host)
            int(eng.prefill([question])[0])
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(28)
        print(f"## cProfile, 10 host-tier requests at {ctx}\n" + s.getvalue(), flush=True)
        del eng, gpu, host
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
