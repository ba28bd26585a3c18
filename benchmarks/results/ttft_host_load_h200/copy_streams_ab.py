"""Same-process A/B of the host tier's copy streams (issue #16): a request's copies on one copy
stream against dealt over two, chunk by chunk (``HostStream.copy_streams``), 8-layer ranges,
alternated twice at 10K and 32K, with the same chunks packed on the GPU as the reference.
Chunks as in ``../ttft_host_split_h200/host_ab.py`` (knorm 0.6 + int4/64, pinned).

    python3 benchmarks/results/ttft_host_load_h200/copy_streams_ab.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "ttft_host_split_h200"))
from host_ab import chunks_for
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock

from ragcompress.kv.fast import FastGenerator, HostChunk, QuantizedPackedChunk
from ragcompress.kv.fast.stream import HostStream


@dataclass(eq=False)
class OneCopier(HostStream):
    copy_streams: int = 1


def main() -> int:
    torch.manual_seed(0)
    model = build_model("llama3-8b", "cuda", torch.bfloat16)
    clock = Clock(torch.device("cuda"), 3, 10)
    base = FastGenerator(model, capacity=32768, max_question=32, max_new_tokens=1, buckets=(32,))
    question = torch.randint(100, model.config.vocab_size, (32,)).tolist()
    cols = ["context", "gpu", "one_a", "two_a", "one_b", "two_b", "same_first_token"]
    rows = []
    for ctx in (10240, 32768):
        prefix, chunks = chunks_for(model, ctx)
        gpu = [QuantizedPackedChunk.from_chunk(c) for c in chunks]
        host = [HostChunk.from_chunk(c.to("cpu"), model.dtype) for c in chunks]
        row: dict = {"context": ctx}
        tokens = {}
        plan = [("gpu", None, gpu), ("one_a", OneCopier, host), ("two_a", HostStream, host)]
        plan += [("one_b", OneCopier, host), ("two_b", HostStream, host)]
        for name, streamer, items in plan:
            eng = base
            if streamer is not None:
                eng = FastGenerator(
                    model, capacity=base.capacity, max_question=32, max_new_tokens=1, buckets=(32,),
                    attention=base.attention, step=base.step, streamer=streamer,
                )  # fmt: skip

            def go(eng: FastGenerator = eng, items: list = items, prefix=prefix) -> int:  # type: ignore[no-untyped-def]
                eng.load(prefix, items)
                return int(eng.prefill([question])[0])

            row[name] = round(clock(go), 3)
            tokens[name] = go()
        row["same_first_token"] = len(set(tokens.values())) == 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
