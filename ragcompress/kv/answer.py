"""The KV path end to end: passages → cached chunks → assembled cache → answer."""

from __future__ import annotations

import collections.abc
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ragcompress.kv.assembly import Assembly, Concat, build_assembly
from ragcompress.kv.cache import CacheStats, ChunkCache
from ragcompress.kv.context import begin_from_chunks, chunk_sizes, prepare_context, teacher_forced
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.store.base import ChunkStore
from ragcompress.kv.store.spec import StoreSpec
from ragcompress.prompt import check_history
from ragcompress.sampling import Sampling, check_sampling
from ragcompress.streaming import AnswerMethods, AnswerStream, Begin, Request, stripped
from ragcompress.types import Passage
from ragcompress.validate import check_request

if TYPE_CHECKING:
    import torch

    from ragcompress.generate import Answer, Generator
    from ragcompress.kv.chunk import KVChunk

__all__ = ["ChunkRequest", "KVAnswerer", "checked_batch"]

_A = TypeVar("_A", bound="KVAnswerer")


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """One checked request on ready chunks, as :meth:`KVAnswerer._begin` (the engine) gets it:
    ``start`` is the request's ``perf_counter()`` (chunk lookup counts in TTFT), ``extra`` the
    cache's counts for the answer's stats."""

    query: str
    chunks: Sequence[KVChunk]
    max_new_tokens: int | None
    sampling: Sampling
    history: Sequence[tuple[str, str]]
    start: float
    extra: dict[str, Any]


@dataclass
class KVAnswerer(AnswerMethods):
    """Answers from cached KV chunks; ``stats.extra`` of every answer holds ``chunks_hit``,
    ``chunks_encoded``, ``chunk_bytes``, ``chunk_bytes_fp16``, ``ttft_ms`` (request start
    — chunk lookup and encoding included — to first token), ``assembly`` (the mode's name) and
    ``recompute`` (share of the chunks' kept tokens recomputed for this request).

    Every entry point takes ``sampling`` (a :class:`~ragcompress.sampling.Sampling`; None:
    greedy) and ``history`` (prior chat turns, ``(role, content)`` pairs, rendered between the
    chunks and the question, so chunk keys and cached chunks do not depend on it), both checked
    before any chunk is looked up."""

    generator: Generator
    cache: ChunkCache
    assembly: Assembly = field(default_factory=Concat)  # a spec or None is built in __post_init__

    def __post_init__(self) -> None:
        # Built and checked against the model here, so that a mode the model cannot run fails
        # when the answerer is built, not in the middle of a request.
        self.assembly = build_assembly(self.assembly)
        self.assembly.check(self.generator.lm)
        self.assembly.bind(self.generator.lm, self.generator.tokenizer)

    @classmethod
    def from_generator(
        cls: type[_A],
        generator: Generator,
        cache_dir: str | os.PathLike[str] | None = None,
        presses: Sequence[Any] = (),
        memory_bytes: int = 2 << 30,
        store: ChunkStore | StoreSpec | None = None,
        assembly: Assembly | Mapping[str, Any] | str | None = None,
        **options: Any,
    ) -> _A:
        """``store``: a built store, or a :class:`~ragcompress.kv.store.spec.StoreSpec` built on
        the generator's device. Without one: ``StoreSpec(gpu_bytes=memory_bytes,
        disk_dir=cache_dir)`` (a memory tier on the generator's device, in front of a disk
        tier when ``cache_dir`` is given). ``store`` and ``cache_dir`` together are a
        ``ValueError`` (put the directory in the spec). ``assembly``: a mode, its spec or name
        (None: ``concat``); ``options`` are a subclass's own fields (e.g.
        ``FastKVAnswerer(capacity=...)``)."""
        if store is not None and cache_dir is not None:
            raise ValueError(
                "give store= or cache_dir=, not both: cache_dir builds a store of its own "
                "(use store=StoreSpec(..., disk_dir=...) to have both)"
            )
        if store is None:
            try:
                store = StoreSpec(gpu_bytes=memory_bytes, disk_dir=cache_dir)
            except ValueError as err:  # name the arguments the caller gave, not the spec's fields
                raise ValueError(f"from_generator(memory_bytes=, cache_dir=): {err}") from None
        if isinstance(store, StoreSpec):
            store = store.build(generator.lm.device)
        encoder = ChunkEncoder.from_generator(generator)
        cache = ChunkCache(encoder, store, presses)
        return cls(generator, cache, build_assembly(assembly), **options)

    answer = AnswerMethods._whole

    def _decoder(self) -> Generator:
        return self.generator

    def _request(self, ask: Request) -> tuple[Begin, Sampling]:
        """Arguments are checked now; chunks are looked up (and encoded) in ``begin``."""
        passages, checked, turns = _checked(ask)

        def begin() -> tuple[Iterator[int], Callable[[list[int]], Answer]]:
            start = time.perf_counter()
            chunks, stats = self.cache.get_or_encode(passages)
            extra = _extra(stats)
            return self._begin(
                ChunkRequest(ask.query, chunks, ask.max_new_tokens, checked, turns, start, extra)
            )

        return begin, checked

    def answer_batch(
        self,
        queries: Sequence[str],
        passages: Sequence[Sequence[Passage] | Sequence[str]],
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Greedy answers to ``queries[i]`` over ``passages[i]``, in order, every request checked
        before any runs. Here one :meth:`answer` after another; the fast engine's paged
        placement runs them as ragged batches (:class:`~ragcompress.kv.fast.answer.FastKVAnswerer`)."""
        checked = checked_batch(queries, passages, max_new_tokens)
        return [self.answer(q, p, max_new_tokens) for q, p in zip(queries, checked, strict=True)]

    def teacher_forced_logprobs(
        self,
        query: str,
        passages: Sequence[Passage] | Sequence[str],
        target_ids: Sequence[int],
        *,
        history: Sequence[tuple[str, str]] | None = None,
    ) -> torch.Tensor:
        """(len(target_ids), vocab) fp32 log-probabilities of each target token given the question
        and the previous targets, from the same context :meth:`answer` prepares (this answerer's
        assembly mode; always on the eager model)."""
        turns = check_history(history)
        chunks, _ = self.cache.get_or_encode(passages)
        gen = self.generator
        ids = gen.layout.question_ids(query, turns)
        ctx = prepare_context(gen.lm, gen.layout, chunks, ids, self.assembly)
        gen.check_length(ctx.position + len(ids) + len(target_ids), 0)
        return teacher_forced(gen.lm, ctx, ids, [int(t) for t in target_ids])

    def _begin(self, job: ChunkRequest) -> tuple[Iterator[int], Callable[[list[int]], Answer]]:
        """Start a request on ready chunks (the engine a subclass replaces): ``(token ids as they
        are decoded, finish(tokens) -> Answer)``, see :func:`~ragcompress.kv.context.begin_from_chunks`."""
        return begin_from_chunks(
            self.generator,
            job.query,
            job.chunks,
            job.max_new_tokens,
            extra=job.extra,
            start=job.start,
            assembly=self.assembly,
            sampling=job.sampling,
            history=job.history,
        )

    def stream_with_stats(
        self,
        query: str,
        passages: Sequence[Passage] | Sequence[str],
        stats: dict[str, Any],
        max_new_tokens: int | None = None,
        *,
        sampling: Sampling | None = None,
        history: Sequence[tuple[str, str]] | None = None,
    ) -> collections.abc.Generator[str, None, None]:
        """Text pieces of the answer, their concatenation equal to ``answer(...).text`` (stripped).

        ``stats`` is filled in as the stream runs: the chunk counts (``chunks``,
        ``chunk_tokens``, ``chunk_tokens_full`` and the cache's ``chunks_hit``,
        ``chunks_encoded``, …) before the first piece, then ``ttft_ms`` (request start to first
        piece), ``total_ms`` and, once the answer is complete, ``prompt_tokens``,
        ``context_tokens`` and ``new_tokens``. Lazy: nothing is looked up or encoded until the
        first piece is asked for.
        """
        passages, checked, turns = _checked(Request(query, passages, max_new_tokens, sampling, history))
        start = time.perf_counter()
        chunks, cache_stats = self.cache.get_or_encode(passages)
        stats.update(chunk_sizes(chunks))
        stats.update(_extra(cache_stats))
        extra = _extra(cache_stats)
        stream = AnswerStream(
            self.generator,
            lambda: self._begin(ChunkRequest(query, chunks, max_new_tokens, checked, turns, start, extra)),
            checked.stop,
        )
        for piece in stripped(stream):
            stats.setdefault("ttft_ms", (time.perf_counter() - start) * 1e3)
            yield piece
        stats["total_ms"] = (time.perf_counter() - start) * 1e3
        stats.setdefault("ttft_ms", stats["total_ms"])
        if stream.answer is not None:
            done = stream.answer.stats
            stats.update(prompt_tokens=done.prompt_tokens, context_tokens=done.context_tokens)
            stats.update(new_tokens=done.new_tokens)


def checked_batch(
    queries: Sequence[str], passages: Sequence[Sequence[Passage] | Sequence[str]], max_new_tokens: int | None
) -> list[list[Passage]]:
    """A batch of requests (``queries[i]`` over ``passages[i]``) checked, each one's passages
    coerced, before any of them runs."""
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passage lists: one list per query")
    return [
        _checked(Request(q, p, max_new_tokens, None, None))[0] for q, p in zip(queries, passages, strict=True)
    ]


def _checked(ask: Request) -> tuple[list[Passage], Sampling, tuple[tuple[str, str], ...]]:
    """One KV request's checked arguments (before any chunk is looked up)."""
    passages = check_request(ask.query, ask.passages, ask.max_new_tokens)
    return passages, check_sampling(ask.sampling), check_history(ask.history)


def _extra(stats: CacheStats) -> dict[str, Any]:
    d = stats.as_dict()
    return {
        k: d[k] for k in ("chunks_hit", "chunks_encoded", "chunk_bytes", "chunk_bytes_fp16", "chunk_misses")
    }
