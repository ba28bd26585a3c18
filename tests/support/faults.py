"""Load and fault scenarios for shared chunk stores, run by the tests and ``benchmarks/store_faults.py``.

Each scenario is bounded in rounds and time, talks only to the store URL it is given (the
tests and the benchmark give a loopback ``redis-server``), stops by itself and returns a
:class:`Outcome`: cases tried, cases passed, throughput, and what went wrong.

- :func:`concurrent_clients`: N processes (spawned) answer questions over one store.
- :func:`killed_writer`: a process writing large chunks is SIGKILLed mid-write, repeatedly.
- :func:`redis_restart`: the Redis server is stopped and restarted while requests run.
- :func:`damaged_tiers`: a flipped byte or a cut chunk in each tier is detected and re-encoded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.store.base import ChunkStore
    from tests.support.redis_local import LocalRedis

__all__ = [
    "Outcome",
    "concurrent_clients",
    "damage",
    "damaged_tiers",
    "killed_writer",
    "redis_restart",
    "synthetic_chunk",
    "synthetic_key",
]


@dataclass
class Outcome:
    case: str
    tried: int = 0
    passed: int = 0
    seconds: float = 0.0
    throughput: float = 0.0  # passed cases (requests, reads) per second
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.tried > 0 and self.passed == self.tried and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- N processes answering over one store -------------------------------------------------
def _client(args: tuple[int, str, str, list[str], int, int]) -> dict[str, Any]:
    """One spawned client: ``rounds`` questions over random passage subsets, every chunk checked
    against this process's own fresh encoding of the same passage."""
    index, url, model_dir, passages, rounds, per_request = args
    import torch

    torch.set_num_threads(1)
    from ragcompress.generate import Generator
    from ragcompress.kv.cache import ChunkCache
    from ragcompress.kv.context import generate_from_chunks
    from ragcompress.kv.encode.encoder import ChunkEncoder
    from ragcompress.kv.store.open import open_store
    from ragcompress.models.load import load_reader

    lm, tok = load_reader(model_dir, "cpu")
    encoder = ChunkEncoder(lm, tok)
    cache = ChunkCache(encoder, open_store(url))
    generator = Generator.from_model(lm, tok, max_new_tokens=4)
    rng = random.Random(index)
    reference: dict[str, KVChunk] = {}
    out: dict[str, Any] = {
        "requests": 0,
        "answers": 0,
        "hits": 0,
        "encoded": 0,
        "wrong": 0,
        "torn": 0,
        "errors": [],
    }
    start = time.perf_counter()
    for _ in range(rounds):
        sample = rng.sample(passages, per_request)
        try:
            chunks, stats = cache.get_or_encode(sample)
        except Exception as err:  # reported, never hidden
            out["errors"].append(f"{type(err).__name__}: {err}")
            continue
        out["requests"] += 1
        out["hits"] += stats.hits
        out["encoded"] += stats.encoded
        # A reason other than "absent" means a damaged value reached a reader.
        out["torn"] += sum(1 for why in stats.misses.values() if why != "absent")
        for text, chunk in zip(sample, chunks, strict=True):
            if text not in reference:
                reference[text] = encoder.encode([text])[0]
            if not _matches(chunk, reference[text]):
                out["wrong"] += 1
        answer = generate_from_chunks(generator, "What is this about?", chunks, 4)
        out["answers"] += int(answer.stats.new_tokens >= 0)
    out["seconds"] = time.perf_counter() - start
    return out


def _matches(chunk: KVChunk, ref: KVChunk) -> bool:
    import torch

    if chunk.key != ref.key or not torch.equal(chunk.token_ids.cpu(), ref.token_ids.cpu()):
        return False
    # Batched vs single encoding differ by float noise only; another passage differs by far more.
    return all(
        torch.allclose(a.float(), b.float(), atol=1e-4)
        for la, lb in zip(chunk.layers, ref.layers, strict=True)
        for a, b in zip(la.tensors().values(), lb.tensors().values(), strict=True)
    )


def concurrent_clients(
    url: str,
    model_dir: str,
    passages: Sequence[str],
    processes: int = 8,
    rounds: int = 4,
    per_request: int = 3,
) -> Outcome:
    """``processes`` spawned clients, ``rounds`` requests each, over the store at ``url``."""
    ctx = mp.get_context("spawn")
    jobs = [(i, url, model_dir, list(passages), rounds, per_request) for i in range(processes)]
    start = time.perf_counter()
    with ctx.Pool(processes) as pool:
        results = pool.map(_client, jobs)
    wall = time.perf_counter() - start
    tried = processes * rounds
    answers = sum(r["answers"] for r in results)
    bad = sum(r["wrong"] + r["torn"] for r in results)
    outcome = Outcome("concurrent clients", tried=tried, passed=answers if not bad else 0, seconds=wall)
    busy = max(r["seconds"] for r in results)  # request loop only, model loading excluded
    outcome.throughput = answers / busy if busy else 0.0
    outcome.failures = [e for r in results for e in r["errors"]]
    if bad:
        outcome.failures.append(
            f"{sum(r['wrong'] for r in results)} wrong, {sum(r['torn'] for r in results)} torn"
        )
    outcome.details = {
        k: sum(r[k] for r in results) for k in ("requests", "hits", "encoded", "wrong", "torn")
    }
    outcome.details["processes"] = processes
    return outcome


# -- a writer killed mid-write ------------------------------------------------------------
def synthetic_key(index: int, tokens: int = 2048) -> ChunkKey:
    """The key of :func:`synthetic_chunk` ``index``: its token ids are ``index``'s own range."""
    from ragcompress.kv.key import ChunkKey, tokens_digest

    ids = range(index * tokens, (index + 1) * tokens)
    return ChunkKey(model="synthetic:0", layout="faults", presses="[]", tokens=tokens_digest(list(ids)))


def synthetic_chunk(index: int, version: int, tokens: int = 2048, layers: int = 4) -> KVChunk:
    """A chunk whose every value is a function of (index, version): readers can tell which write
    they got (``base_offset`` is the version). 4 layers × 2 heads × 2048 tokens × 64 dims × K and V
    in fp32 ≈ 8 MiB."""
    import torch

    from ragcompress.kv.chunk import DenseLayer, KVChunk

    gen = torch.Generator().manual_seed(index * 1000 + version)
    made = []
    for _ in range(layers):
        k = torch.randn(2, tokens, 64, generator=gen)
        made.append(DenseLayer(k, k + 1.0, torch.arange(tokens).expand(2, -1).clone()))
    # The stored token ids must be the key's (and as many as the chunk's length), so the write's
    # version rides in base_offset.
    ids = torch.arange(index * tokens, (index + 1) * tokens)
    return KVChunk(made, ids, version, tokens, synthetic_key(index, tokens), "synthetic:0")


def _writer(url: str, keys: int, state: Any) -> None:
    from ragcompress.kv.store.open import open_store

    store = open_store(url)
    version = 0
    while True:
        version += 1
        for i in range(keys):
            chunk = synthetic_chunk(i, version)
            state.value = 1  # inside put from here on
            store.put(chunk.key, chunk)
            state.value = 0


def _check(store: ChunkStore, key: ChunkKey, index: int) -> str | None:
    """None when the stored value is absent or one whole write; else what is wrong."""
    import torch

    found = store.lookup(key)
    if found.chunk is None:
        return None if found.reason == "absent" else f"damaged value read: {found.reason}"
    version = found.chunk.base_offset
    expected = synthetic_chunk(index, version)
    for a, b in zip(found.chunk.layers, expected.layers, strict=True):
        if not all(
            torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values(), strict=True)
        ):
            return f"chunk {index} mixes writes (claims version {version})"
    return None


def killed_writer(url: str, kills: int = 5, keys: int = 3, seed: int = 0) -> Outcome:
    """Kill a writing process ``kills`` times at random moments; after each kill, every key must
    read back absent or whole. ``url``: a Redis URL or a disk store path."""
    from ragcompress.kv.store.open import open_store

    ctx = mp.get_context("spawn")
    rng = random.Random(seed)
    reader = open_store(url)
    outcome = Outcome(f"writer killed mid-write ({url.split(':', 1)[0] if '://' in url else 'disk'})")
    in_flight = 0
    start = time.perf_counter()
    for _ in range(kills):
        state = ctx.Value("i", 0)
        proc = ctx.Process(target=_writer, args=(url, keys, state), daemon=True)
        proc.start()
        deadline = time.monotonic() + 60
        while state.value == 0 and time.monotonic() < deadline:  # wait for its first write
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.6))
        in_flight += int(state.value == 1)
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(10)
        for i in range(keys):
            outcome.tried += 1
            problem = _check(reader, synthetic_key(i), i)
            if problem is None:
                outcome.passed += 1
            else:
                outcome.failures.append(problem)
    outcome.seconds = time.perf_counter() - start
    outcome.throughput = outcome.passed / outcome.seconds
    outcome.details = {"kills": kills, "killed_inside_put": in_flight}
    return outcome


# -- Redis stopped and restarted mid-run ---------------------------------------------------
def redis_restart(server: LocalRedis, cache: Any, passages: Sequence[str], requests: int = 30) -> Outcome:
    """Requests through ``cache`` (a ChunkCache over a RedisStore on ``server``) while the
    server is stopped after a third of them and restarted after two thirds.

    Passes when every request either returns the right chunks or raises
    StoreUnavailableError (clear, after bounded retries), and requests succeed again after the
    restart."""
    from ragcompress.kv.store.errors import StoreUnavailableError

    outcome = Outcome("redis stopped and restarted")
    reference = {p: cache.encoder.encode([p])[0] for p in passages}
    errors, recovered, wrong = 0, 0, 0
    worst_error_s = 0.0
    start = time.perf_counter()
    for i in range(requests):
        if i == requests // 3:
            server.stop()
        if i == 2 * requests // 3:
            server.start()
        sample = [passages[(i + j) % len(passages)] for j in range(2)]
        outcome.tried += 1
        t = time.perf_counter()
        try:
            chunks, _ = cache.get_or_encode(sample)
        except StoreUnavailableError:
            errors += 1
            worst_error_s = max(worst_error_s, time.perf_counter() - t)
            down = requests // 3 <= i < 2 * requests // 3
            outcome.passed += int(down)  # an error is right only while the server is down
            continue
        if all(_matches(c, reference[p]) for c, p in zip(chunks, sample, strict=True)):
            outcome.passed += 1
            recovered += int(i >= 2 * requests // 3)
        else:
            wrong += 1
            outcome.failures.append(f"request {i}: wrong chunk")
    outcome.seconds = time.perf_counter() - start
    outcome.throughput = outcome.passed / outcome.seconds
    if recovered == 0:
        outcome.failures.append("no request succeeded after the restart")
    outcome.details = {"errors_while_down": errors, "recovered": recovered, "worst_error_s": worst_error_s}
    return outcome


# -- a damaged chunk in each tier ----------------------------------------------------------
def damage(store: ChunkStore, key: ChunkKey, kind: str) -> None:
    """Flip one byte (``kind="flip"``) or cut the chunk short (``"truncate"``) where ``store``
    keeps it: tensors in place for a memory tier, the file for a disk store, the value in Redis."""
    import dataclasses

    from ragcompress.kv.store.disk import DiskStore
    from ragcompress.kv.store.memory import Entry, MemoryStore
    from ragcompress.kv.store.redis import RedisStore

    if kind not in ("flip", "truncate"):
        raise ValueError(f"kind must be 'flip' or 'truncate', got {kind!r}")
    if isinstance(store, MemoryStore):
        entry = store.lru.peek(key.digest)
        if entry is None:
            raise KeyError(f"the memory tier holds no chunk {key.digest[:12]}")
        chunk = entry.chunk
        if kind == "flip":
            next(iter(chunk.layers[0].tensors().values())).view(-1)[3] += 1.0
        else:
            layers: list[Any] = list(chunk.layers)  # dense layers: drop every layer's last token
            cut = [
                dataclasses.replace(
                    x, keys=x.keys[:, :-1], values=x.values[:, :-1], positions=x.positions[:, :-1]
                )
                for x in layers
            ]
            store.lru.put(key.digest, Entry(dataclasses.replace(chunk, layers=cut), entry.digest))
        return
    if isinstance(store, DiskStore):
        path = store.path(key)
        data = path.read_bytes()
    elif isinstance(store, RedisStore):
        data = bytes(store.client.get(store.redis_key(key)))  # type: ignore[arg-type]
    else:
        raise TypeError(f"cannot damage a {type(store).__name__}")
    if kind == "flip":
        raw = bytearray(data)
        raw[-9] ^= 0x10
        data = bytes(raw)
    else:
        data = data[: len(data) // 2]
    if isinstance(store, DiskStore):
        path.write_bytes(data)
    else:
        store.client.set(store.redis_key(key), data)


def damaged_tiers(stack: Any, cache: Any, passages: Sequence[str]) -> Outcome:
    """For each tier of ``stack`` (a TieredStore behind ``cache``) and each kind of damage:
    damage only that tier's copy, with no healthy copy behind it; the next request must
    detect it, re-encode and return the right chunk."""
    outcome = Outcome("damaged chunk in each tier")
    start = time.perf_counter()
    names = [name for name, _ in stack.tiers]
    for depth, name in enumerate(names):
        for kind in ("flip", "truncate"):
            text = passages[(depth * 2 + (kind == "truncate")) % len(passages)] + f" ({name}, {kind})"
            reference = cache.encoder.encode([text])[0]
            cache.get_or_encode([text])
            for other, tier in stack.tiers:  # healthy copies only in front of the damaged tier
                if other != name:
                    tier.remove(reference.key)
            damage(stack.tier(name), reference.key, kind)
            outcome.tried += 1
            chunks, stats = cache.get_or_encode([text])
            reason = next(iter(stats.misses.values()), "")
            if stats.encoded == 1 and reason.startswith(f"{name}:") and _matches(chunks[0], reference):
                outcome.passed += 1
            else:
                outcome.failures.append(f"{name}/{kind}: encoded={stats.encoded}, reason={reason!r}")
    outcome.seconds = time.perf_counter() - start
    outcome.throughput = outcome.passed / outcome.seconds
    outcome.details = {"tiers": names}
    return outcome
