"""A RAG pipeline: optional FAISS retrieval → text compressors → generator (text path), or
→ cached KV chunks → generator (KV path). Built from a checked
:class:`~ragcompress.pipeline.spec.PipelineSpec` (a YAML file: ``ragcompress/pipeline/specs/README.md``).

The KV path is a seam: a ``kv`` section in the spec makes :meth:`Pipeline.build` build a
``ragcompress.kv.answer.KVAnswerer`` (imported only then) that answers from cached chunks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.pipeline.spec import KVSpec, PipelineError, PipelineSpec, load_spec, overlay, parse_spec
from ragcompress.types import Budget, CompressionStats, Passage, validate_passages

if TYPE_CHECKING:
    from ragcompress.generate import GenerationStats, Generator
    from ragcompress.retrieve import FaissRetriever
    from ragcompress.text.base import TextCompressor

__all__ = [
    "KVSpec",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "PipelineSpec",
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

    def as_dict(self, snippet: int = 120) -> dict[str, Any]:
        """JSON-able summary; ``ratio`` is tokens before / after (None when nothing was kept)."""
        c = self.compression
        ratio = None if math.isinf(c.ratio) else round(c.ratio, 4)
        return {
            "question": self.question,
            "answer": self.answer,
            "tokens_before": c.tokens_before,
            "tokens_after": c.tokens_after,
            "ratio": ratio,
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
    ) -> PipelineResult:
        """Answer ``question`` from ``passages``, or from the top ``k`` retrieved when ``None``."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        start = time.perf_counter()
        if passages is None:
            if self.retriever is None:
                raise PipelineError("no passages given and no retriever: pass passages or call index()")
            found = self.retriever.search(question, self.k)
        else:
            found = validate_passages(passages)
        retrieval_ms = (time.perf_counter() - start) * 1e3
        kept, stats = self._compress(found, question)
        if self.kv is not None and kept:
            answer = self.kv.answer(question, kept, max_new_tokens)
        else:
            answer = self.generator.generate(question, kept, max_new_tokens)
        return PipelineResult(
            question=question,
            answer=answer.text,
            passages=kept,
            retrieved=list(found),
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


def _build_compressor(steps: Sequence[Any]) -> TextCompressor | None:
    from ragcompress.registry import build

    if not steps:
        return None
    compressor: TextCompressor = build(steps[0] if len(steps) == 1 else list(steps), kind="text")
    return compressor
