"""The KV path on the fast engine: same chunk cache, same answers, no transformers forward.

:class:`FastKVAnswerer` is a :class:`~ragcompress.kv.answer.KVAnswerer` whose answers come from
:class:`~ragcompress.kv.fast.FastGenerator`: chunks are written into one static KV buffer (the
ones the previous request already wrote are skipped), the question is prefilled and decoded by
the fast step (captured CUDA graphs and split-KV flash attention on a GPU; the same step run
eagerly with reference attention on a CPU). Assembly modes: ``concat`` writes chunks straight into
the buffer (re-rotating them there); the others prepare the context on the eager model (APE's shared
positions and 1/T keys; blend's question pass and partial forward) and write it into the buffer as
is, after which the question runs on the fast step. ``ape`` with ``scale`` != 1 is refused when the
answerer is built (the fast attention cannot weigh chunks apart from the prefix).

:meth:`FastKVAnswerer.answer_batch` answers several questions, each over its own passages: on a
paged placement up to ``max_batch`` of them run as one ragged step (each question reads its own
chunks in place, :meth:`~ragcompress.kv.fast.paged_engine.PagedFastGenerator.load_batch`),
greedy; on the copy placement one after another. The other entry points take one request a
call, greedy or sampled (:mod:`ragcompress.sampling`: the same picker as the eager
loop, run on the step's logits outside the captured graphs); the buffer is sized once by
``capacity`` (context tokens: shared prefix + kept chunk tokens) and raises
:class:`~ragcompress.kv.fast.BufferOverflowError` when a request does not fit (history makes
the question longer: raise ``max_question`` for long conversations).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ragcompress.kv.answer import ChunkRequest, KVAnswerer, _extra, checked_batch
from ragcompress.kv.context import chunk_answer
from ragcompress.kv.fast.placement import CopyPlacement, Placement
from ragcompress.sampling import GREEDY, Sampling, pick_token, request_rng

if TYPE_CHECKING:
    import torch

    from ragcompress.generate import Answer
    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast import FastGenerator, PackedChunk
    from ragcompress.kv.fast.paged_engine import PagedFastGenerator
    from ragcompress.types import Passage

__all__ = ["FastKVAnswerer"]


@dataclass
class FastKVAnswerer(KVAnswerer):
    """``capacity``: context slots of the static buffer; ``max_question``: longest question in
    tokens (chat template included); ``graphs``: capture CUDA graphs (ignored off CUDA);
    ``share_weights``: on CUDA the fused step stacks q/k/v and gate/up weights into copies of
    its own (~2/3 of the decoder weights again; the model is never changed); ``True`` reads
    the model's weights in place instead (no extra memory, more GEMM launches per step), see
    :class:`~ragcompress.kv.fast.fused.FusedStep`. ``placement``: how chunks reach attention,
    copied into the request's buffer (:class:`~ragcompress.kv.fast.placement.CopyPlacement`)
    or read in place from a paged pool (:class:`~ragcompress.kv.fast.placement.PagedPlacement`,
    ``concat`` only). ``max_batch``: questions one step of :meth:`answer_batch` holds."""

    capacity: int = 16384
    max_question: int = 256
    graphs: bool = True
    share_weights: bool = False
    placement: Placement = field(default_factory=CopyPlacement)
    max_batch: int = 1
    _engine: FastGenerator | None = field(default=None, init=False, repr=False)
    _prefix: PackedChunk | None = field(default=None, init=False, repr=False)
    _prefix_src: PrefixKV | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.assembly.check_fast(self.generator.lm)  # a mode or family it cannot run fails here
        self.placement.check(self.assembly)
        device = self.generator.lm.device
        if device.type != "cuda":  # it works (reference kernels, for tests), but slowly
            warnings.warn(
                f"FastKVAnswerer on {device}: without CUDA the fast engine runs its torch reference "
                "kernels, many times slower than KVAnswerer (the eager KV path); use it on a GPU",
                RuntimeWarning,
                stacklevel=3,
            )

    @property
    def engine(self) -> FastGenerator:
        """The fast engine, built on first use (its buffer is allocated then)."""
        if self._engine is None:
            from ragcompress.kv.fast import default_step

            gen = self.generator
            self._engine = self.placement.engine(
                gen.lm,
                step=default_step(gen.lm, share_weights=self.share_weights),
                capacity=self.capacity,
                max_question=self.max_question,
                max_new_tokens=gen.max_new_tokens,
                buckets=(*(b for b in (16, 32, 64, 128, 256) if b < self.max_question), self.max_question),
                graphs=self.graphs,
                max_batch=self.max_batch,
            )
        return self._engine

    def answer_batch(
        self,
        queries: Sequence[str],
        passages: Sequence[Sequence[Passage] | Sequence[str]],
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Greedy answers to ``queries[i]`` over ``passages[i]``, in order. On a paged placement
        up to ``max_batch`` questions share one step (a ragged batch; ``stats.extra["batch"]``
        says how many, ``ttft_ms`` is the batch's start to its first tokens); on the copy
        placement each is :meth:`answer`. Every request is checked before any is run."""
        from ragcompress.kv.fast.paged_engine import PagedFastGenerator

        if not isinstance(self.engine, PagedFastGenerator):
            return super().answer_batch(queries, passages, max_new_tokens)
        checked = checked_batch(queries, passages, max_new_tokens)
        out: list[Answer] = []
        for i in range(0, len(queries), self.max_batch):
            j = i + self.max_batch
            out += self._ragged(self.engine, queries[i:j], checked[i:j], max_new_tokens)
        return out

    def _ragged(
        self,
        engine: PagedFastGenerator,
        queries: Sequence[str],
        passages: Sequence[list[Passage]],
        limit: int | None,
    ) -> list[Answer]:
        """One ragged step of ``len(queries)`` questions and its decode steps."""
        gen, limit = self.generator, self._limit(limit)
        start = time.perf_counter()
        jobs = []
        for q, p in zip(queries, passages, strict=True):
            chunks, stats = self.cache.get_or_encode(p)
            jobs.append((gen.layout.question_ids(q, ()), chunks, _extra(stats)))
        _, packed = self._packed_prefix()
        starts = engine.load_batch([(packed, chunks) for _, chunks, _ in jobs])
        for pos, (ids, _, _) in zip(starts, jobs, strict=True):
            gen.check_length(pos + len(ids), limit)
        tokens: list[list[int]] = [[] for _ in jobs]
        live, first = [True] * len(jobs), None
        for host in engine.steps([ids for ids, _, _ in jobs], limit):
            first = first or time.perf_counter()
            for k, t in enumerate(host):
                live[k] = live[k] and t not in gen.stop_ids
                tokens[k] += [t] if live[k] else []
            if not any(live):
                break
        ttft = None if first is None else (first - start) * 1e3
        info = {"engine": "fast", "assembly": self.assembly.name, "recompute": 0.0, "batch": len(jobs)}
        return [
            chunk_answer(gen, toks, len(ids), pos, chunks, start, ttft, {**extra, **info})
            for toks, pos, (ids, chunks, extra) in zip(tokens, starts, jobs, strict=True)
        ]

    def _limit(self, max_new_tokens: int | None) -> int:
        """New tokens a request may decode: ``max_new_tokens``, or the generator's, within the
        engine's question region."""
        limit = self.generator.max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit > self.engine.max_new_tokens:
            raise ValueError(f"max_new_tokens={limit} exceeds the generator's {self.engine.max_new_tokens}")
        return limit

    def _packed_prefix(self) -> tuple[PrefixKV, PackedChunk]:
        """The shared prefix and its packing for the engine, packed again when the weights
        change."""
        from ragcompress.kv.encode.encoder import prefix_kv
        from ragcompress.kv.fast import PackedChunk

        gen = self.generator
        prefix = prefix_kv(gen.lm, gen.layout)  # kept per weight version: re-pack when it changes
        if self._prefix is None or self._prefix_src is not prefix:
            self._prefix, self._prefix_src = PackedChunk.from_prefix(prefix), prefix
        return prefix, self._prefix

    def _tokens(
        self,
        ids: list[int],
        chunks: Sequence[KVChunk],
        max_new_tokens: int | None,
        timing: dict[str, float],
        sampling: Sampling = GREEDY,
    ) -> Iterator[int]:
        """Token ids after question ``ids`` chosen by ``sampling`` (stop tokens end the answer,
        unyielded); ``timing["position"]`` is where the question starts, ``timing["first"]``
        when token 1 came."""
        gen, engine = self.generator, self.engine
        limit = self._limit(max_new_tokens)
        prefix, packed = self._packed_prefix()
        timing["position"], timing["recompute"] = self.assembly.load_fast(
            engine, packed, gen.lm, prefix, chunks, ids
        )
        gen.check_length(int(timing["position"]) + len(ids), limit)
        stops = gen.stop_ids
        choose = _sampler(sampling, engine.device)
        for host in engine.steps([ids], limit, choose):  # one host sync per token: the answer streams
            timing.setdefault("first", time.perf_counter())
            if host[0] in stops:
                return
            yield host[0]

    def _begin(self, job: ChunkRequest) -> tuple[Iterator[int], Callable[[list[int]], Answer]]:
        ids = self.generator.layout.question_ids(job.query, job.history)
        chunks, start = job.chunks, job.start
        timing: dict[str, float] = {}

        def finish(tokens: list[int]) -> Answer:
            ttft = (timing["first"] - start) * 1e3 if "first" in timing else None
            info = {
                **job.extra,
                "engine": "fast",
                "assembly": self.assembly.name,
                "recompute": timing["recompute"],
            }
            position = int(timing["position"])
            return chunk_answer(
                self.generator, tokens, len(ids), position, chunks, start, ttft, info, job.sampling.stop
            )

        return self._tokens(ids, chunks, job.max_new_tokens, timing, job.sampling), finish


def _sampler(sampling: Sampling, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The fast engine's token choice for one request: None when greedy (the argmax stays inside
    the captured graph), else :func:`~ragcompress.sampling.pick_token` per row of the step's
    logits (B, vocab) with the request's random generator -> (B,) token ids on the device."""
    if sampling.greedy:
        return None
    rng = request_rng(sampling, device)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        import torch

        picked = [pick_token(row, sampling, rng) for row in logits]
        return torch.tensor(picked, dtype=torch.long, device=logits.device)

    return choose
