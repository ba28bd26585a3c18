"""A RAG pipeline: optional FAISS retrieval → text compressors → generator (text path), or
→ cached KV chunks → generator (KV path). Built from a checked
:class:`~ragcompress.pipeline.spec.PipelineSpec` (a YAML file: ``ragcompress/pipeline/specs/README.md``).

The KV path is a seam: a ``kv`` section in the spec makes :meth:`Pipeline.build` build a
``ragcompress.kv.answer.KVAnswerer`` (imported only then) that answers from cached chunks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.pipeline.spec import KVSpec, PipelineError, PipelineSpec, load_spec, overlay, parse_spec
from ragcompress.types import Budget, CompressionStats, Passage, validate_passages

if TYPE_CHECKING:
    from ragcompress.generate import Answer, GenerationStats, Generator
    from ragcompress.retrieve import FaissRetriever
    from ragcompress.sampling import Sampling
    from ragcompress.streaming import AnswerStream
    from ragcompress.text.base import TextCompressor

__all__ = [
    "KVSpec",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "PipelineSpec",
    "PipelineStream",
    "find_pipeline",
    "pipeline_names",
]


def _pipeline_dirs() -> list[Path]:
    # The ready specs ship inside the package (package data), so a wheel install has them.
    specs = Path(__file__).resolve().parent / "specs"
    return [specs] if specs.is_dir() else []


def pipeline_names() -> list[str]:
    """Names of the ready pipeline specs that :func:`find_pipeline` resolves."""
    return sorted({p.stem for d in _pipeline_dirs() for p in d.glob("*.yaml")})


def find_pipeline(name_or_path: str | Path) -> Path:
    """A spec file: an existing path, or the name of a ready spec (``"text-only"``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    for d in _pipeline_dirs():
        if (d / f"{stem}.yaml").is_file():
            return d / f"{stem}.yaml"
    raise PipelineError(
        f"no pipeline {str(name_or_path)!r}: not a file, and not one of {', '.join(pipeline_names()) or '-'}"
    )


@dataclass(frozen=True)
class PipelineResult:
    question: str
    answer: str
    passages: list[Passage]  # what the generator read, after compression, in retrieval order
    retrieved: list[Passage]  # what retrieval (or the caller) supplied, before compression
    compression: CompressionStats
    generation: GenerationStats
    retrieval_ms: float
    latency_ms: float  # the whole run: retrieval + compression + generation

    @property
    def path(self) -> str:
        """``"kv"`` when the answer came from KV chunks, else ``"text"``."""
        return "kv" if "chunk_bytes" in self.generation.extra else "text"

    @property
    def ratio(self) -> float | None:
        """The compression of this result's path (None when nothing was kept). Text path:
        tokens before / after the text compressors. KV path: the fp16 bytes of the chunks'
        uncompressed KV / the bytes stored (token eviction, quantization and the storage dtype
        together; the text step, if any, is ``tokens_before`` / ``tokens_after``)."""
        if self.path == "kv":
            stored, fp16 = self.generation.extra["chunk_bytes"], self.generation.extra["chunk_bytes_fp16"]
            return fp16 / stored if stored else None
        return None if math.isinf(self.compression.ratio) else self.compression.ratio

    def as_dict(self, snippet: int = 120) -> dict[str, Any]:
        """JSON-able summary; ``ratio`` is :attr:`ratio` (``ratio_basis`` says which:
        ``"text_tokens"`` or ``"kv_bytes_vs_fp16"``)."""
        c = self.compression
        ratio = self.ratio
        return {
            "question": self.question,
            "answer": self.answer,
            "path": self.path,
            "tokens_before": c.tokens_before,
            "tokens_after": c.tokens_after,
            "ratio": None if ratio is None else round(ratio, 4),
            "ratio_basis": "kv_bytes_vs_fp16" if self.path == "kv" else "text_tokens",
            "compressor": c.compressor,
            "latency_ms": round(self.latency_ms, 1),
            "ttft_ms": round(self.generation.ttft_ms, 1),
            "retrieval_ms": round(self.retrieval_ms, 1),
            "compression_ms": round(c.latency_ms, 1),
            "passages_retrieved": [p.id for p in self.retrieved],
            "passages_kept": [
                {"id": p.id, "score": p.score, "text": _clip(p.text, snippet)} for p in self.passages
            ],
            "dropped": dict(c.dropped),
            **{k: v for k, v in self.generation.as_dict().items() if k not in ("ttft_ms",)},
        }


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


@dataclass
class Pipeline:
    """Retrieval (optional) → text compressor (optional) → generator or KV answerer.

    ``budget`` overrides the compressor's own ratio when set (a ratio in (0, 1] or a token
    count). ``k`` is how many passages retrieval returns.
    """

    generator: Generator
    compressor: TextCompressor | None = None
    retriever: FaissRetriever | None = None
    k: int = 4
    embedder: str | None = None
    budget: Budget | float | int | None = None
    kv: Any = None  # a ragcompress.kv.answer.KVAnswerer, or None for the text path
    name: str = ""
    spec: PipelineSpec | None = None  # what it was built from (None: assembled by hand)
    _counter: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise PipelineError(f"k: passages retrieved per question, an int >= 1; got {self.k!r}")
        if self.budget is not None and not isinstance(self.budget, Budget):
            self.budget = Budget.coerce(self.budget)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, name_or_path: str | Path, **overrides: Any) -> Pipeline:
        """Build from a spec file or a ready spec's name; ``overrides`` as in :meth:`from_spec`.
        A bad spec raises :class:`PipelineError` naming the file and the key path."""
        return cls.from_spec(load_spec(find_pipeline(name_or_path)), **overrides)

    @classmethod
    def from_spec(
        cls,
        spec: PipelineSpec | Mapping[str, Any],
        *,
        generator: Generator | None = None,
        retriever: FaissRetriever | None = None,
        compressors: Any = None,
        kv: KVSpec | Mapping[str, Any] | None = None,
    ) -> Pipeline:
        """Build from a spec (a :class:`PipelineSpec` or a mapping of the YAML's shape). Keyword
        arguments replace the spec's parts: an already loaded ``generator`` or ``retriever``,
        ``compressors`` (specs or built compressors; ``[]`` for none), ``kv`` (a ``KVSpec``)."""
        checked = parse_spec(spec)
        if compressors is not None:
            checked = overlay(checked, "compressors", compressors, "compressors=")
        if kv is not None:
            checked = overlay(checked, "kv", kv, "kv=")
        return cls.build(checked, generator=generator, retriever=retriever)

    @classmethod
    def build(
        cls,
        spec: PipelineSpec,
        *,
        generator: Generator | None = None,
        retriever: FaissRetriever | None = None,
    ) -> Pipeline:
        """The pipeline a checked spec describes (loads the generator unless one is given)."""
        if generator is None:
            from ragcompress.generate import Generator

            generator = Generator(**spec.generator.kwargs())
        if retriever is None and spec.retriever.index:
            from ragcompress.retrieve import FaissRetriever

            retriever = FaissRetriever.load(spec.retriever.index)
        return cls(
            generator=generator,
            compressor=_build_compressor(spec.compressors),
            retriever=retriever,
            k=spec.retriever.k,
            embedder=spec.retriever.embedder,
            budget=None if spec.ratio is None else Budget(ratio=spec.ratio),
            kv=spec.kv.build(generator) if spec.kv is not None else None,
            name=spec.name,
            spec=spec,
        )

    def index(self, passages: Sequence[Passage] | Sequence[str]) -> FaissRetriever:
        """Build a FAISS index over ``passages`` with the spec's embedder and use it for retrieval."""
        from ragcompress.retrieve import FaissRetriever

        self.retriever = FaissRetriever.from_passages(passages, embedder=self.embedder)
        return self.retriever

    # -- running -------------------------------------------------------------------------
    def run(
        self,
        question: str,
        passages: Sequence[Passage] | Sequence[str] | None = None,
        max_new_tokens: int | None = None,
        *,
        sampling: Sampling | None = None,
        history: Sequence[tuple[str, str]] | None = None,
    ) -> PipelineResult:
        """Answer ``question`` from ``passages``, or from the top ``k`` retrieved when ``None``.
        ``sampling`` (None: greedy) and ``history`` (prior chat turns) go to the generator or the
        KV answerer (:mod:`ragcompress.sampling`, :mod:`ragcompress.prompt`)."""
        start = time.perf_counter()
        found, kept, stats, retrieval_ms = self._context(question, passages, sampling, history)
        if self.kv is not None and kept:
            answer = self.kv.answer(question, kept, max_new_tokens, sampling=sampling, history=history)
        else:
            answer = self.generator.generate(
                question, kept, max_new_tokens, sampling=sampling, history=history
            )
        return self._result(question, found, kept, stats, answer, retrieval_ms, start)

    def run_batch(
        self,
        questions: Sequence[str],
        passages: Sequence[Sequence[Passage] | Sequence[str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[PipelineResult]:
        """:meth:`run` for each question (greedy), over ``passages[i]`` or its own retrieved top
        ``k``. Every question is retrieved and compressed first; on the fast engine the KV
        answers then come in ragged batches of ``kv.fast_batch`` questions, one step each, every
        question over its own chunks (:meth:`~ragcompress.kv.fast.answer.FastKVAnswerer.answer_batch`);
        otherwise one after another."""
        if passages is not None and len(passages) != len(questions):
            raise ValueError(
                f"{len(questions)} questions but {len(passages)} passage lists: one list per question"
            )
        start = time.perf_counter()
        prepared = [
            self._context(q, None if passages is None else passages[i], None, None)
            for i, q in enumerate(questions)
        ]
        kv = self.kv
        batched = [i for i, (_, kept, _, _) in enumerate(prepared) if kv is not None and kept]
        answers: dict[int, Answer] = {}
        if kv is not None and batched:
            got = kv.answer_batch(
                [questions[i] for i in batched], [prepared[i][1] for i in batched], max_new_tokens
            )
            answers.update(zip(batched, got, strict=True))
        for i, (_, kept, _, _) in enumerate(prepared):
            if i not in answers:  # nothing kept: the generator answers from the question alone
                answers[i] = self.generator.generate(questions[i], kept, max_new_tokens)
        return [
            self._result(q, found, kept, stats, answers[i], ms, start)
            for i, (q, (found, kept, stats, ms)) in enumerate(zip(questions, prepared, strict=True))
        ]

    def stream(
        self,
        question: str,
        passages: Sequence[Passage] | Sequence[str] | None = None,
        max_new_tokens: int | None = None,
        *,
        sampling: Sampling | None = None,
        history: Sequence[tuple[str, str]] | None = None,
    ) -> PipelineStream:
        """:meth:`run`, streamed: retrieval and compression run at the call, then the returned
        :class:`PipelineStream` yields the answer's text as it is decoded (the pieces join to
        ``result.answer``) and holds the :class:`PipelineResult` once exhausted."""
        start = time.perf_counter()
        found, kept, stats, retrieval_ms = self._context(question, passages, sampling, history)
        if self.kv is not None and kept:
            pieces = self.kv.stream(question, kept, max_new_tokens, sampling=sampling, history=history)
        else:
            pieces = self.generator.stream(question, kept, max_new_tokens, sampling=sampling, history=history)
        return PipelineStream(
            pieces, lambda answer: self._result(question, found, kept, stats, answer, retrieval_ms, start)
        )

    def _context(
        self,
        question: str,
        passages: Sequence[Passage] | Sequence[str] | None,
        sampling: object,
        history: object,
    ) -> tuple[list[Passage], list[Passage], CompressionStats, float]:
        """``(retrieved, kept, compression stats, retrieval ms)`` after checking every argument."""
        from ragcompress.prompt import check_history
        from ragcompress.sampling import check_sampling

        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        check_sampling(sampling)
        check_history(history)
        start = time.perf_counter()
        if passages is None:
            if self.retriever is None:
                raise PipelineError("no passages given and no retriever: pass passages or call index()")
            found = self.retriever.search(question, self.k)
        else:
            found = validate_passages(passages)
        retrieval_ms = (time.perf_counter() - start) * 1e3
        kept, stats = self._compress(found, question)
        return list(found), kept, stats, retrieval_ms

    @staticmethod
    def _result(
        question: str,
        found: list[Passage],
        kept: list[Passage],
        stats: CompressionStats,
        answer: Answer,
        retrieval_ms: float,
        start: float,
    ) -> PipelineResult:
        return PipelineResult(
            question=question,
            answer=answer.text,
            passages=kept,
            retrieved=found,
            compression=stats,
            generation=answer.stats,
            retrieval_ms=retrieval_ms,
            latency_ms=(time.perf_counter() - start) * 1e3,
        )

    def _compress(self, passages: list[Passage], question: str) -> tuple[list[Passage], CompressionStats]:
        if self.compressor is not None:
            result = self.compressor.compress_with_stats(passages, question, self.budget)
            return result.passages, result.stats
        if self._counter is None:
            from ragcompress.text.base import TokenCounter

            self._counter = TokenCounter(self.generator.model)
        n = sum(self._counter.many([p.text for p in passages]))
        stats = CompressionStats("none", n, n, len(passages), len(passages), 0.0)
        return passages, stats


class PipelineStream(Iterator[str]):
    """The answer of :meth:`Pipeline.stream` as it is decoded: text pieces (leading and
    trailing whitespace held back, so that they join to exactly ``result.answer``), then
    :attr:`result`, the :class:`PipelineResult` (None until the pieces are exhausted)."""

    def __init__(self, pieces: AnswerStream, finish: Callable[[Answer], PipelineResult]) -> None:
        from ragcompress.streaming import stripped

        self._stream = pieces
        self._pieces = stripped(pieces)
        self._finish = finish
        self.result: PipelineResult | None = None

    def __iter__(self) -> PipelineStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            if self.result is None and self._stream.answer is not None:
                self.result = self._finish(self._stream.answer)
            raise


def _build_compressor(steps: Sequence[Any]) -> TextCompressor | None:
    from ragcompress.registry import build

    if not steps:
        return None
    compressor: TextCompressor = build(steps[0] if len(steps) == 1 else list(steps), kind="text")
    return compressor
