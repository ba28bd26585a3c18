"""(9) and load: N processes × R requests over one shared store, in four set-ups: a disk store,
a Redis, and disk + Redis with Redis killed mid-run or on a closed port (one tier down).

Every chunk a worker gets is compared with a serial reference encoding and every answer with
the serial reference answer (wrong answers must be 0); every encode is counted per chunk across
processes (duplicate encodes: the share of chunks encoded more than once; goal ≤ 5%)."""

from __future__ import annotations

import multiprocessing as mp
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.faults.common import Env, same_chunk
from ragcompress.kv.context import generate_from_chunks
from ragcompress.kv.encode.encoder import ChunkEncoder
from tests.support.faults import Outcome

__all__ = ["DUPLICATE_GOAL", "MODES", "load"]

MODES = ["disk", "redis", "disk+redis, Redis killed mid-run", "disk+redis, Redis on a closed port"]
DUPLICATE_GOAL = 0.05
QUESTIONS = ["What is this about?", "Which one is oldest?", "Where is it?"]
CORPUS = 16  # passages per set-up; requests draw 3 of them


@dataclass
class CountingEncoder(ChunkEncoder):
    """The real encoder, counting encodes per chunk (by the token ids' digest)."""

    counts: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def encode_ids(self, items: Sequence[tuple[str, Sequence[int]]], presses: Sequence[Any] = ()) -> Any:
        from ragcompress.kv.key import tokens_digest

        with self._lock:
            self.counts.update(tokens_digest(list(ids)) for _, ids in items)
        return super().encode_ids(items, presses)


@dataclass
class Plan:
    """What every worker needs: where the stores are, the requests, the serial references."""

    model_dir: str
    disk_root: str
    redis_url: str
    closed_url: str
    reference_dir: str
    requests: list[list[tuple[str, list[str]]]]  # per mode: (question, passages)
    answers: list[list[tuple[int, ...]]]  # per mode: the serial run's answer token ids
    per_process: int


def _store(plan: Plan, mode: int) -> Any:
    from ragcompress.kv.store.disk import DiskStore
    from ragcompress.kv.store.redis import RedisStore
    from ragcompress.kv.store.tiered import TieredStore

    disk = DiskStore(f"{plan.disk_root}/{mode}")
    if mode == 0:
        return disk
    if mode == 1:
        return RedisStore(plan.redis_url, tenant=f"load{mode}")
    url = plan.redis_url if mode == 2 else plan.closed_url
    remote = RedisStore(url, tenant=f"load{mode}", retries=1, backoff_s=0.01, timeout_s=2.0)
    return TieredStore([("disk", disk), ("remote", remote)])


def _run_mode(
    plan: Plan, mode: int, index: int, parts: tuple[CountingEncoder, Any, Any], progress: Any
) -> dict[str, Any]:
    """One worker's requests in one set-up; ``parts``: encoder, generator, reference store."""
    from ragcompress.kv.cache import ChunkCache

    encoder, gen, ref = parts

    cache = ChunkCache(encoder, _store(plan, mode))
    rng = random.Random(1000 * mode + index)
    out: dict[str, Any] = {"answered": 0, "errors": [], "wrong_chunks": 0, "wrong_answers": 0, "ms": []}
    encoder.counts.clear()
    for _ in range(plan.per_process):
        k = rng.randrange(len(plan.requests[mode]))
        question, passages = plan.requests[mode][k]
        start = time.perf_counter()
        try:
            chunks, _ = cache.get_or_encode(passages)
            answer = generate_from_chunks(gen, question, chunks, 4)
        except Exception as err:  # counted as not answered, reported
            out["errors"].append(f"{type(err).__name__}: {err}"[:200])
            continue
        out["ms"].append((time.perf_counter() - start) * 1000)
        out["answered"] += 1
        for chunk in chunks:
            want = ref.lookup(chunk.key).chunk
            out["wrong_chunks"] += int(want is None or not same_chunk(chunk, want))
        out["wrong_answers"] += int(answer.token_ids != plan.answers[mode][k])
        with progress.get_lock():
            progress.value += 1
    out["encodes"] = dict(encoder.counts)
    return out


def _worker(plan: Plan, index: int, barrier: Any, progress: Any, results: Any) -> None:
    import logging

    import torch

    # A dead tier logs a warning per skipped call, on purpose here: keep the benchmark's output.
    logging.basicConfig(level=logging.ERROR)

    torch.set_num_threads(1)
    from ragcompress.generate import Generator
    from ragcompress.kv.store.disk import DiskStore
    from ragcompress.models.load import load_reader

    lm, tok = load_reader(plan.model_dir, "cpu")
    encoder = CountingEncoder(lm, tok, max_batch_tokens=1)
    gen = Generator.from_model(lm, tok, max_new_tokens=4)
    ref = DiskStore(plan.reference_dir)
    out = {}
    for mode in range(len(MODES)):
        barrier.wait()
        out[mode] = _run_mode(plan, mode, index, (encoder, gen, ref), progress)
        barrier.wait()
    results.put((index, out))


def _plan(env: Env, per_process: int) -> Plan:
    from ragcompress.kv.store.disk import DiskStore
    from tests.support.redis_local import free_port

    base = [f"{p} Note {i}." for i in range(2) for p in env.passages][:CORPUS]
    reference = DiskStore(env.fresh("reference"))
    gen = env.generator(4)
    requests, answers = [], []
    for mode in range(len(MODES)):
        corpus = [f"{p} (set-up {mode})" for p in base]
        rng = random.Random(mode)
        reqs = [(QUESTIONS[i % 3], rng.sample(corpus, 3)) for i in range(40)]
        chunks = env.encoder.encode(corpus)
        for c in chunks:
            reference.put(c.key, c)
        by_text = dict(zip(corpus, chunks, strict=True))
        answers.append(
            [generate_from_chunks(gen, q, [by_text[p] for p in ps], 4).token_ids for q, ps in reqs]
        )
        requests.append(reqs)
    return Plan(
        env.model_dir, str(env.fresh("shared")), env.redis.url, f"redis://127.0.0.1:{free_port()}/0",
        str(reference.directory), requests, answers, per_process,
    )  # fmt: skip


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _outcomes(
    results: dict[int, Any], processes: int, per_process: int, seconds: list[float]
) -> list[Outcome]:
    rows, dedup = [], Outcome(f"(9) in-flight dedup, {processes} processes: duplicates <= 5%")
    for mode, name in enumerate(MODES):
        parts = [results[i][mode] for i in sorted(results)]
        ms = [x for p in parts for x in p["ms"]]
        counts: Counter[str] = Counter()
        for p in parts:
            counts.update(p["encodes"])
        dup = sum(1 for n in counts.values() if n > 1) / len(counts) if counts else 0.0
        answered = sum(p["answered"] for p in parts)
        wrong = sum(p["wrong_answers"] for p in parts)
        wrong_chunks = sum(p["wrong_chunks"] for p in parts)
        out = Outcome(
            f"load {processes}x{per_process}: {name}", tried=processes * per_process, seconds=seconds[mode]
        )
        out.passed = answered if not (wrong or wrong_chunks) else 0
        out.throughput = answered / seconds[mode] if seconds[mode] else 0.0
        out.failures = [e for p in parts for e in p["errors"]][:5]
        if wrong or wrong_chunks:
            out.failures.append(f"{wrong} WRONG answers, {wrong_chunks} WRONG chunks")
        out.details = {
            "answered": answered,
            "wrong_answers": wrong,
            "wrong_chunks": wrong_chunks,
            "chunks_encoded": len(counts),
            "encodes": sum(counts.values()),
            "duplicate_share": round(dup, 4),
            "p50_ms": round(_percentile(ms, 50), 1),
            "p99_ms": round(_percentile(ms, 99), 1),
        }
        rows.append(out)
        dedup.tried += 1
        if dup <= DUPLICATE_GOAL:
            dedup.passed += 1
        else:
            dedup.failures.append(f"{name}: {dup:.1%} of chunks encoded more than once")
        dedup.details[name] = f"{dup:.1%}"
    dedup.seconds = sum(seconds)
    return [*rows, dedup]


def load(env: Env, processes: int = 8, per_process: int = 100) -> list[Outcome]:
    """One Outcome per set-up (requests answered with no wrong answer) and one for dedup."""
    plan = _plan(env, per_process)
    ctx = mp.get_context("spawn")
    barrier, progress, results = ctx.Barrier(processes + 1), ctx.Value("i", 0), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(plan, i, barrier, progress, results), daemon=True)
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    seconds: list[float] = []
    stopped_after = -1
    try:
        for mode in range(len(MODES)):
            progress.value = 0
            barrier.wait(timeout=600)
            start = time.perf_counter()
            if mode == 2:  # kill Redis a third of the way through
                while progress.value < processes * per_process // 3 and time.perf_counter() - start < 600:
                    time.sleep(0.01)
                stopped_after = int(progress.value)
                env.redis.stop()
            barrier.wait(timeout=3600)
            seconds.append(time.perf_counter() - start)
            env.redis.start()
        got = dict(results.get(timeout=600) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    rows = _outcomes(got, processes, per_process, seconds)
    rows[2].details["redis_stopped_after_requests"] = stopped_after
    return rows
