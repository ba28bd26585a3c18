"""A RAG pipeline: optional FAISS retrieval → text compressors → generator (text path), or
→ cached KV chunks → generator (KV path). Built from a YAML spec (see ``ragcompress/pipeline/specs/README.md``).

The KV path is a seam: a ``kv`` section in the spec makes :meth:`Pipeline.from_spec` build a
``ragcompress.kv.answer.KVAnswerer`` (imported only then) that answers from cached chunks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.types import Budget, CompressionStats, Passage, validate_passages

if TYPE_CHECKING:
    from ragcompress.generate import GenerationStats, Generator
    from ragcompress.retrieve import FaissRetriever
    from ragcompress.text.base import TextCompressor

__all__ = ["KVSpec", "Pipeline", "PipelineError", "PipelineResult", "find_pipeline", "pipeline_names"]

_SECTIONS = {"name", "description", "retriever", "compressors", "generator", "kv"}
_RETRIEVER_KEYS = {"k", "embedder", "index"}
_GENERATOR_KEYS = {"model", "device", "dtype", "max_new_tokens", "system"}
_KV_KEYS = {"cache_dir", "presses", "store", "memory_bytes", "assembly"}


class PipelineError(ValueError):
    """A pipeline spec is missing or malformed; the message names the file and the key."""


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
class KVSpec:
    """Where cached KV chunks live and how they are compressed (the spec's ``kv`` section).

    ``store`` is a chunk-store URL (``memory://``, ``file:///dir``, ``redis://...``); without
    it chunks stay in memory, backed by ``cache_dir`` on disk when that is set.
    ``fast_capacity`` (context tokens) answers on the fast engine
    (:class:`~ragcompress.kv.fast.answer.FastKVAnswerer`) instead of transformers' forward.
    ``assembly`` is an assembly-mode spec (``{"name": "blend", "recompute": 0.15}``, a bare name,
    or None for ``concat``); a bad one fails in :meth:`build`, before any request.
    """

    cache_dir: str | None = None
    presses: tuple[Any, ...] = ()
    store: str | None = None
    memory_bytes: int = 2 << 30
    fast_capacity: int | None = None
    assembly: Any = None

    def build(self, generator: Generator) -> Any:
        """A ``KVAnswerer`` over ``generator`` (imported lazily: the KV path pulls in torch)."""
        from ragcompress.kv.answer import KVAnswerer

        store = None
        if self.store:
            from ragcompress.kv.store.open import open_store

            store = open_store(self.store, device=str(generator.lm.device))
        cache_dir = str(Path(self.cache_dir).expanduser()) if self.cache_dir else None
        common: dict[str, Any] = dict(
            cache_dir=cache_dir,
            presses=list(self.presses),
            memory_bytes=self.memory_bytes,
            store=store,
            assembly=self.assembly,
        )
        if self.fast_capacity is not None:
            from ragcompress.kv.fast.answer import FastKVAnswerer

            if self.fast_capacity < 1:
                raise ValueError(f"fast_capacity is a number of context tokens, got {self.fast_capacity}")
            return FastKVAnswerer.from_generator(generator, capacity=self.fast_capacity, **common)
        return KVAnswerer.from_generator(generator, **common)


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
    _counter: Any = field(default=None, init=False, repr=False)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, name_or_path: str | Path, **overrides: Any) -> Pipeline:
        """Build from a spec file or a ready spec's name; ``overrides`` as in :meth:`from_spec`."""
        import yaml

        path = find_pipeline(name_or_path)
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise PipelineError(f"{path}: not valid YAML: {err}") from err
        try:
            return cls.from_spec(spec or {}, **overrides)
        except (PipelineError, TypeError, KeyError, ValueError) as err:
            raise PipelineError(f"{path}: {err}") from err

    @classmethod
    def from_spec(
        cls,
        spec: Mapping[str, Any],
        *,
        generator: Generator | None = None,
        retriever: FaissRetriever | None = None,
        compressors: Any = None,
        kv: KVSpec | None = None,
    ) -> Pipeline:
        """Build from a parsed spec. Keyword arguments replace the spec's parts: an already
        loaded ``generator`` or ``retriever``, ``compressors`` (specs; ``[]`` for none), ``kv``."""
        if not isinstance(spec, Mapping):
            raise PipelineError(f"a pipeline spec is a mapping, got {type(spec).__name__}")
        _check_keys("top level", spec, _SECTIONS)
        ret = _section(spec, "retriever", _RETRIEVER_KEYS)
        gen_spec = _section(spec, "generator", _GENERATOR_KEYS)
        if generator is None:
            from ragcompress.generate import Generator

            generator = Generator(**gen_spec)
        if retriever is None and ret.get("index"):
            from ragcompress.retrieve import FaissRetriever

            retriever = FaissRetriever.load(ret["index"])
        steps = spec.get("compressors") if compressors is None else compressors
        if kv is None and spec.get("kv") is not None:
            section = _section(spec, "kv", _KV_KEYS)
            presses = section.get("presses") or ()
            # one press may be written as a single spec (a mapping or a name), not only as a list
            presses = (presses,) if isinstance(presses, dict | str) else tuple(presses)
            kv = KVSpec(**{**section, "presses": presses})
        return cls(
            generator=generator,
            compressor=_build_compressor(steps),
            retriever=retriever,
            k=int(ret.get("k", 4)),
            embedder=ret.get("embedder"),
            kv=kv.build(generator) if kv is not None else None,
            name=str(spec.get("name", "")),
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


def _build_compressor(steps: Any) -> TextCompressor | None:
    from ragcompress.registry import build

    if steps is None or steps == []:
        return None
    if isinstance(steps, Sequence) and not isinstance(steps, str) and len(steps) == 1:
        steps = steps[0]
    return build(steps)  # type: ignore[no-any-return]


def _section(spec: Mapping[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    section = spec.get(name) or {}
    _check_keys(name, section, allowed)
    return dict(section)


def _check_keys(where: str, section: Any, allowed: set[str]) -> None:
    if not isinstance(section, Mapping):
        raise PipelineError(f"{where} must be a mapping, got {type(section).__name__}")
    unknown = set(section) - allowed
    if unknown:
        raise PipelineError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
