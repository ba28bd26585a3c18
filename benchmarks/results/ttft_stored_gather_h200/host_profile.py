"""The host's share of loading stored chunks (one tensor set per layer) against packed ones:
``FastGenerator.load`` of 64 chunks into a 32-layer, 8-KV-head, head_dim-128 buffer, with the gather
kernel's launch replaced by nothing, so what is timed is the work the host does before the GPU
can start (planning, tables, upload). Small passages (16 tokens) keep the memory low; the host
work does not depend on the tokens. Runs on a CPU:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 benchmarks/results/ttft_stored_gather_h200/host_profile.py
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ragcompress.kv.chunk import DenseLayer, KVChunk
from ragcompress.kv.fast import EagerStep, FastGenerator, PackedChunk, _gather, write
from ragcompress.kv.key import ChunkKey

L, KVH, D, N, CHUNKS = 32, 8, 128, 16, 64


def main() -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=KVH * D, num_attention_heads=KVH, num_key_value_heads=KVH,
        num_hidden_layers=L, intermediate_size=64, max_position_embeddings=4096,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    fast = FastGenerator(
        model, capacity=CHUNKS * N + 64, max_question=8, max_new_tokens=2, step=EagerStep(model)
    )
    write._kernel_runs = lambda buffer, rotary: True  # the Triton path's host work ...
    _gather.gather_dense = lambda *a, **k: None  # ... without its launch

    def layer(start: int) -> DenseLayer:
        pos = torch.arange(start, start + N).expand(KVH, -1).contiguous()
        return DenseLayer(torch.randn(KVH, N, D).bfloat16(), torch.randn(KVH, N, D).bfloat16(), pos)

    prefix = PackedChunk.from_layers(
        [torch.randn(KVH, 4, D).bfloat16()] * L, [torch.randn(KVH, 4, D).bfloat16()] * L, 4, 0
    )
    stored = [
        KVChunk([layer(4) for _ in range(L)], torch.arange(N), 4, N, ChunkKey("m", "l", "[]", str(i)), "m")
        for i in range(CHUNKS)
    ]
    packed = [PackedChunk.from_chunk(c) for c in stored]
    for name, chunks in (("packed", packed), ("stored", stored)):
        times = []
        for _ in range(12):
            fast._resident = []  # a cold load every time
            start = time.perf_counter()
            fast.load(prefix, chunks)
            times.append((time.perf_counter() - start) * 1e3)
        print(
            f"{name}: host ms per load of {CHUNKS} chunks, median of 10: {statistics.median(times[2:]):.2f}"
        )
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        fast._resident = []
        fast.load(prefix, stored)
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
