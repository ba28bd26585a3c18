"""LangChain ``BaseDocumentCompressor`` that runs a ragcompress text compressor.

Each input ``Document`` becomes one ``ragcompress.Passage`` and each kept passage maps back
to its own original document: same ``id``, same metadata (scores included), new
``page_content``, and what the compressor did under ``metadata["ragcompress"]``. Documents
are never joined into one string and split again, which is how the LLMLingua adapters lose
per-document scores and metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import ConfigDict, Field, field_validator

from ragcompress import Budget, CompressionStats, Passage, build
from ragcompress.types import STATS_KEY, content_id

__all__ = ["STATS_KEY", "RagCompressDocumentCompressor"]

# Numeric metadata keys that retrievers and rerankers use for a document's score, in the
# order we look for them; the first one present becomes ``Passage.score``.
_SCORE_KEYS = ("relevance_score", "score", "similarity_score")


class RagCompressDocumentCompressor(BaseDocumentCompressor):
    """Compress retrieved documents with a ragcompress compressor, keeping their identity.

    ``compressor`` is a ragcompress compressor object, or a spec (dict, JSON string, name,
    or list of specs for a chain) that ``ragcompress.build`` turns into one. ``budget``
    overrides the compressor's own ratio: a float in (0, 1] keeps that share of tokens, an
    int > 1 is a token target, a ``ragcompress.Budget`` is used as is.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    compressor: Any
    budget: Budget | float | int | None = Field(default=None)

    @field_validator("compressor", mode="before")
    @classmethod
    def _build_compressor(cls, value: Any) -> Any:
        if isinstance(value, dict | str | list | tuple):
            value = build(value)
        if not callable(getattr(value, "compress_with_stats", None)):
            raise TypeError(
                "compressor must be a ragcompress text compressor (with compress_with_stats) or a spec "
                f"that ragcompress.build accepts, got {type(value).__name__}"
            )
        return value

    @field_validator("budget", mode="before")
    @classmethod
    def _check_budget(cls, value: Any) -> Any:
        Budget.coerce(value)  # fail at construction, with ragcompress's own message
        return value

    # -- BaseDocumentCompressor ------------------------------------------------------------
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Compressed documents: at most one per input, in input order, same ids and metadata."""
        return self.compress_documents_with_stats(documents, query)[0]

    # -- extras ----------------------------------------------------------------------------
    def compress_documents_with_stats(
        self, documents: Sequence[Document], query: str
    ) -> tuple[list[Document], CompressionStats]:
        """Like :meth:`compress_documents`, also returning the statistics of the whole call."""
        passages, originals = _to_passages(documents)
        result = self.compressor.compress_with_stats(passages, query, self.budget)
        stats: CompressionStats = result.stats
        position = {p.id: i for i, p in enumerate(passages)}
        kept: list[tuple[int, Passage]] = []
        seen: set[str] = set()
        for p in result.passages:
            if p.id not in position or p.id in seen:
                problem = "twice" if p.id in seen else "but it was not an input"
                raise ValueError(f"compressor {stats.compressor!r} returned passage {p.id!r} {problem}")
            seen.add(p.id)
            kept.append((position[p.id], p))
        kept.sort(key=lambda pair: pair[0])
        counts = _token_counts(
            self.compressor, [originals[i].page_content for i, _ in kept], [p.text for _, p in kept]
        )
        batch = {k: v for k, v in stats.as_dict().items() if k != "dropped"}
        docs = [
            _rebuild(originals[i], p, stats.compressor, before, after, batch)
            for (i, p), (before, after) in zip(kept, counts, strict=True)
        ]
        return docs, stats

    def as_runnable(self) -> Runnable[dict[str, Any], list[Document]]:
        """This compressor as an LCEL step taking ``{"documents": [...], "query": str}``."""

        def run(inputs: dict[str, Any]) -> list[Document]:
            return list(self.compress_documents(*_unpack(inputs)))

        async def arun(inputs: dict[str, Any]) -> list[Document]:
            return list(await self.acompress_documents(*_unpack(inputs)))

        return RunnableLambda(run, afunc=arun, name="RagCompressDocumentCompressor")


def _unpack(inputs: dict[str, Any]) -> tuple[Sequence[Document], str]:
    if not isinstance(inputs, dict) or "documents" not in inputs or "query" not in inputs:
        raise TypeError(
            "the ragcompress step takes a dict with 'documents' and 'query', got "
            f"{type(inputs).__name__}{sorted(inputs) if isinstance(inputs, dict) else ''}"
        )
    return inputs["documents"], inputs["query"]


def _score(doc: Document) -> float | None:
    for key in _SCORE_KEYS:
        value = doc.metadata.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _to_passages(documents: Sequence[Document]) -> tuple[list[Passage], list[Document]]:
    """One passage per document; ids are the documents' ids (or content hashes), made unique."""
    passages: list[Passage] = []
    originals: list[Document] = []
    used: set[str] = set()
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise TypeError(f"document #{i} must be a langchain Document, got {type(doc).__name__}")
        if not isinstance(doc.page_content, str):
            raise TypeError(f"document #{i} ({doc.id!r}): page_content must be str")
        base = str(doc.id) if doc.id else content_id(doc.page_content)
        # The same document can come back twice (e.g. from an ensemble retriever); each copy
        # is its own input and gets its own output, so the passage ids must differ.
        pid, k = base, 1
        while pid in used:
            pid, k = f"{base}#{k}", k + 1
        used.add(pid)
        passages.append(Passage(text=doc.page_content, id=pid, score=_score(doc), metadata=doc.metadata))
        originals.append(doc)
    return passages, originals


def _token_counts(compressor: Any, before: list[str], after: list[str]) -> list[tuple[int, int]]:
    """(tokens before, tokens after) of each kept document, with the compressor's tokenizer."""
    if not after:
        return []
    from ragcompress.text.base import TokenCounter

    counts = TokenCounter(getattr(compressor, "tokenizer", None)).many(before + after)
    return list(zip(counts[: len(before)], counts[len(before) :], strict=True))


def _rebuild(
    original: Document, passage: Passage, compressor: str, before: int, after: int, batch: dict[str, Any]
) -> Document:
    meta = dict(original.metadata)
    stats: dict[str, Any] = dict(meta.get(STATS_KEY, {}))
    stats.update(passage.metadata.get(STATS_KEY, {}))
    stats.update(compressor=compressor, tokens_before=before, tokens_after=after, batch=batch)
    meta[STATS_KEY] = stats
    return Document(page_content=passage.text, id=original.id, metadata=meta, type=original.type)
