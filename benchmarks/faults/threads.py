"""(2) One answerer, 8 threads, presses that need attention weights (observed, kvzip): every
answer and every stored chunk equals a serial run's, and no request fails."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from benchmarks.faults.common import Env, Tally, same_chunk
from tests.support.faults import Outcome

__all__ = ["PRESSES", "eight_threads"]

PRESSES: dict[str, list[Any]] = {
    "plain": [],
    "observed": [{"name": "observed", "ratio": 0.5}],
    "kvzip": [{"name": "kvzip", "ratio": 0.5}],
    "observed+quantize": [{"name": "observed", "ratio": 0.5}, {"name": "quantize", "bits": 8}],
}
THREADS = 8
QUESTIONS = ["Which is the tallest?", "What do octopuses have?", "Which river is longest?"]


def _answerer(env: Env, store: Any, presses: list[Any]) -> Any:
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.cache import ChunkCache
    from ragcompress.kv.encode.encoder import ChunkEncoder

    gen = env.generator(4)
    # one passage per batch: a chunk's bytes do not depend on which request encoded it first
    return KVAnswerer(gen, ChunkCache(ChunkEncoder.from_generator(gen, max_batch_tokens=1), store, presses))


def _case(env: Env, presses: list[Any], store_kind: str, rounds: int) -> str | None:
    from ragcompress.kv.store.disk import DiskStore
    from ragcompress.kv.store.memory import MemoryStore

    corpus = env.passages
    requests = [
        (QUESTIONS[(t + r) % 3], [corpus[(t + r + j) % len(corpus)] for j in range(3)])
        for t in range(THREADS)
        for r in range(rounds)
    ]

    def store() -> Any:
        return MemoryStore(1 << 28) if store_kind == "memory" else DiskStore(env.fresh("threads"))

    serial = _answerer(env, store(), presses)
    want = [serial.answer(q, ps).token_ids for q, ps in requests]
    shared = _answerer(env, store(), presses)
    start = threading.Barrier(THREADS)

    def worker(t: int) -> list[tuple[int, ...]]:
        start.wait()  # every thread meets the cold cache at once
        return [shared.answer(q, ps).token_ids for q, ps in requests[t * rounds : (t + 1) * rounds]]

    with ThreadPoolExecutor(THREADS) as pool:
        got = [ids for part in pool.map(worker, range(THREADS)) for ids in part]
    wrong = sum(a != b for a, b in zip(got, want, strict=True))
    if wrong:
        return f"{wrong}/{len(want)} answers differ from the serial run's"
    if env.lm.config._attn_implementation != "sdpa":
        return f"the model was left in {env.lm.config._attn_implementation!r} attention"
    for key in serial.cache.keys(corpus):
        a, b = serial.cache.store.lookup(key).chunk, shared.cache.store.lookup(key).chunk
        if a is None or b is None:
            return f"chunk {key.digest[:12]} not stored (serial: {a is not None}, threads: {b is not None})"
        if not same_chunk(a, b):
            return f"stored chunk {key.digest[:12]} differs from the serial run's"
    return None


def eight_threads(env: Env) -> Outcome:
    tally = Tally(f"(2) {THREADS} threads on one answerer = serial")
    rounds = 1 if env.quick else 3
    for name, presses in PRESSES.items():
        for kind in ("memory", "disk"):
            if env.quick and (name not in ("observed", "kvzip") or kind == "disk"):
                continue
            tally.run(f"{name} / {kind}", partial(_case, env, presses, kind, rounds))
    return tally.done(threads=THREADS, requests_per_thread=rounds)
