"""Pre-encode a corpus into a shared chunk store, in this process or on a Ray cluster.

Every passage is encoded (and pressed) once into the store that ``store_url`` names, so that
generators pointing at the same store answer from cached chunks from the first query on. The
run is idempotent and resumable: a passage whose chunk the store already holds, and that
loads and verifies, is skipped (checked with ``lookup_many`` before anything is encoded), so
re-running after a crash encodes only what is missing, and a damaged chunk is re-encoded and
repaired rather than skipped.

With Ray, batches of passages go to actors that each load the model once: one actor per GPU
when the cluster has GPUs, one single-threaded CPU actor per CPU otherwise (at most
``max_workers``). Workers open the store themselves from its URL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragcompress.types import Passage

__all__ = ["BatchIndexer", "IndexSummary", "index_corpus"]


@dataclass(frozen=True, slots=True)
class IndexSummary:
    passages: int  # passages read from the source
    encoded: int  # chunks encoded and written in this run
    skipped: int  # passages whose chunk the store already held intact (or a duplicate did)
    seconds: float
    store: str  # the store URL, password redacted
    workers: int  # 1 in-process, else Ray actors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchIndexer:
    """Encodes batches of passages into one store; the unit of work in-process and in a Ray actor.

    ``model``: alias, path or HF id (``None``: the packaged reader), loaded on ``device``.
    """

    def __init__(
        self,
        store_url: str,
        model: str | None = None,
        presses: Sequence[Any] = (),
        tenant: str | None = None,
        secret: bytes | str | None = None,
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        import torch

        from ragcompress.kv.cache import ChunkCache
        from ragcompress.kv.encode.encoder import ChunkEncoder
        from ragcompress.kv.store.open import open_store
        from ragcompress.models.load import load_reader

        if threads:
            torch.set_num_threads(threads)
        lm, tok = load_reader(model, device)
        self.store = open_store(store_url, tenant=tenant, secret=secret)
        self.cache = ChunkCache(ChunkEncoder(lm, tok), self.store, presses)

    def run(self, passages: Sequence[Passage]) -> tuple[int, int]:
        """``(encoded, skipped)`` for one batch."""
        keys = self.cache.keys(passages)
        # A full lookup, not `contains`: a damaged chunk exists but is a miss, so it is re-encoded.
        found = self.store.lookup_many(keys)
        todo: dict[str, Passage] = {}
        for passage, key, got in zip(passages, keys, found, strict=True):
            if key.digest not in todo and got.chunk is None:
                todo[key.digest] = passage
        if not todo:
            return 0, len(passages)
        _, stats = self.cache.get_or_encode(list(todo.values()))
        return stats.encoded, len(passages) - stats.encoded

    def ready(self) -> bool:
        return True


def _passages(source: str | os.PathLike[str] | Sequence[Passage | str]) -> list[Passage]:
    from ragcompress.types import validate_passages

    if isinstance(source, str | os.PathLike):
        from ragcompress.corpus import load_documents

        return load_documents(Path(source))
    paths = [s for s in source if isinstance(s, os.PathLike)]
    if paths:
        from ragcompress.corpus import load_documents

        if len(paths) != len(source):
            raise TypeError("index_corpus: pass either paths or passages, not a mix of both")
        return [p for path in paths for p in load_documents(Path(path))]
    return list(validate_passages(source))  # type: ignore[arg-type]


def _batches(passages: list[Passage], size: int) -> Iterator[list[Passage]]:
    for i in range(0, len(passages), size):
        yield passages[i : i + size]


def index_corpus(
    source: str | os.PathLike[str] | Sequence[Passage | str],
    store_url: str,
    model: str | None = None,
    presses: Sequence[Any] = (),
    ray_address: str | None = None,
    batch_size: int = 16,
    tenant: str | None = None,
    secret: bytes | str | None = None,
    max_workers: int | None = None,
    progress: bool = True,
) -> IndexSummary:
    """Encode every passage of ``source`` into the store at ``store_url``.

    ``source``: a file or folder of .txt/.md/.jsonl documents (as :func:`ragcompress.corpus.
    load_documents` reads them), a list of such paths, or passages (``Passage`` or ``str``).
    ``presses``: registry specs (JSON-able dicts or names), applied before storing.
    ``ray_address``: ``None`` encodes in this process; ``"local"`` starts (or reuses) a Ray
    instance on this machine; anything else is passed to ``ray.init(address=...)``
    (``"auto"``, ``"ray://head:10001"``).
    """
    from tqdm.auto import tqdm

    from ragcompress.kv.store.open import open_store, redact_url
    from ragcompress.registry import spec_of

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    passages = _passages(source)
    specs = [p if isinstance(p, dict | str) else spec_of(p) for p in presses]
    # Fail on a bad URL or an unreachable store here, before any model loads anywhere.
    probe = open_store(store_url, tenant=tenant, secret=secret)
    if hasattr(probe, "ping"):
        probe.ping()
    encoded = skipped = 0
    bar = tqdm(total=len(passages), unit="passage", desc="indexing", disable=not progress)
    if ray_address is None:
        workers = 1
        indexer = BatchIndexer(store_url, model, specs, tenant, secret)
        for batch in _batches(passages, batch_size):
            e, s = indexer.run(batch)
            encoded, skipped = encoded + e, skipped + s
            bar.update(len(batch))
            bar.set_postfix(encoded=encoded, skipped=skipped)
    else:
        results, workers = _run_on_ray(
            list(_batches(passages, batch_size)), ray_address, max_workers,
            (store_url, model, specs, tenant, secret),
        )  # fmt: skip
        for e, s in results:
            encoded, skipped = encoded + e, skipped + s
            bar.update(e + s)
            bar.set_postfix(encoded=encoded, skipped=skipped)
    bar.close()
    return IndexSummary(
        passages=len(passages),
        encoded=encoded,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        store=redact_url(store_url),
        workers=workers,
    )


def _run_on_ray(
    batches: list[list[Passage]], address: str, max_workers: int | None, args: tuple[Any, ...]
) -> tuple[Iterator[tuple[int, int]], int]:
    try:
        import ray
        from ray.util import ActorPool
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("indexing on Ray needs ray: pip install 'ragcompress-core[ray]'") from err
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    count = max(1, min(gpus or cpus, max_workers or len(batches), len(batches)))
    actors: list[Any]
    if gpus:
        actor_cls = ray.remote(num_gpus=1, num_cpus=1)(BatchIndexer)
        actors = [actor_cls.remote(*args, device="cuda") for _ in range(count)]
    else:
        # One thread per actor: the actors are the parallelism.
        actor_cls = ray.remote(num_cpus=1)(BatchIndexer)
        actors = [actor_cls.remote(*args, device="cpu", threads=1) for _ in range(count)]

    def results() -> Iterator[tuple[int, int]]:
        try:
            ray.get([a.ready.remote() for a in actors])  # a model or store error surfaces once, here
            yield from ActorPool(actors).map_unordered(lambda a, b: a.run.remote(b), batches)
        finally:
            for a in actors:
                ray.kill(a)

    return results(), count
