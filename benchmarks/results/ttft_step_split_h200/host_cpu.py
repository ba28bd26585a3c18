"""The host work of a warm request, on the CPU: ``load_reusing`` of the previous request's 64
chunks (32K context, a 32-layer tiny Llama) and ``prefill``'s preparation, with the step itself
left out (the engine's replay replaced by a no-op), so only the Python and torch host calls
before the GPU would start are timed. Run it from two trees for a before/after:

    cd TREE && PYTHONPATH=$PWD:$PWD/benchmarks OMP_NUM_THREADS=1 python3 host_cpu.py

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import time

import torch
from ragcompress_bench.ttft_timing import passage_sizes

from ragcompress.kv.fast import EagerStep, FastGenerator, PackedChunk
from tests.support.tiny import make_tiny_llama


def per_call_ms(fn: object, reps: int = 300) -> float:
    for _ in range(10):
        fn()  # type: ignore[operator]
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    torch.manual_seed(0)
    m = make_tiny_llama(1024, seed=1, num_hidden_layers=32)
    cfg = m.config
    ctx, qlen = 32768, 32
    fast = FastGenerator(
        m, capacity=ctx, max_question=qlen, max_new_tokens=4, buckets=(qlen,), graphs=False, step=EagerStep(m)
    )
    kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads)
    prefix = PackedChunk(torch.randn(64, *kv_shape), torch.randn(64, *kv_shape), 64, 0)
    chunks = [
        PackedChunk(torch.randn(s, *kv_shape), torch.randn(s, *kv_shape), s, 64)
        for s in passage_sizes(ctx - 64, 512)
    ]
    q = [list(range(100, 100 + qlen))]
    fast.load(prefix, chunks)
    fast.prefill(q)
    fast._replay = lambda shape: None  # the step is the GPU's: time the host only

    def request() -> None:
        fast.load_reusing(prefix, chunks)
        fast.prefill(q)

    print(f"| host work, {len(chunks)} resident chunks | ms a call |\n|---|---|")
    print(f"| load_reusing | {per_call_ms(lambda: fast.load_reusing(prefix, chunks)):.4f} |")
    print(f"| load_reusing + prefill (step left out) | {per_call_ms(request):.4f} |")


if __name__ == "__main__":
    main()
