"""Host time of ``FastGenerator.load`` and of the streamer's flush for pinned host chunks at 32K
(Llama-3-8B shape, knorm 0.6 + int4/64 as in ``host_ab.py``): cProfile of 10 requests.

    python3 benchmarks/results/ttft_host_split_h200/load_profile.py
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from host_ab import chunks_for
from ragcompress_bench.ttft_shapes import build_model

from ragcompress.kv.fast import FastGenerator, HostChunk


def main() -> int:
    torch.manual_seed(0)
    model = build_model("llama3-8b", "cuda", torch.bfloat16)
    eng = FastGenerator(model, capacity=32768, max_question=32, max_new_tokens=1, buckets=(32,))
    question = torch.randint(100, model.config.vocab_size, (32,)).tolist()
    prefix, chunks = chunks_for(model, 32768)
    host = [HostChunk.from_chunk(c.to("cpu"), model.dtype) for c in chunks]
    del chunks
    for _ in range(3):
        eng.load(prefix, host)
        eng.prefill([question]).tolist()
    prof = cProfile.Profile()
    for _ in range(10):
        torch.cuda.synchronize()
        prof.enable()
        eng.load(prefix, host)
        eng.prefill([question])
        prof.disable()
        torch.cuda.synchronize()
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
