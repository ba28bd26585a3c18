"""LangChain ``BaseDocumentCompressor`` that runs a ragcompress text compressor.

Each input ``Document`` becomes one ``ragcompress.Passage`` and each kept passage maps back
to its own original document: same ``id``, same metadata (scores included), new
``page_content``, and what the compressor did under ``metadata["ragcompress"]``. Documents
are never joined into one string and split again, which is how the LLMLingua adapters lose
per-document scores and metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from pydantic import BeforeValidator, ConfigDict, Field

from ragcompress import Budget, CompressionStats, Passage
from ragcompress.adapters import Kept, checked_budget, compress_items, text_compressor, to_passages
from ragcompress.types import STATS_KEY

__all__ = ["STATS_KEY", "RagCompressDocumentCompressor"]

# The name of the child run each compression call opens under the caller's callbacks.
RUN_NAME = "ragcompress.compress"

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

    compressor: Annotated[Any, BeforeValidator(text_compressor)]
    budget: Annotated[Budget | float | int | None, BeforeValidator(checked_budget)] = Field(default=None)

    # -- BaseDocumentCompressor ------------------------------------------------------------
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Compressed documents: at most one per input, in input order, same ids and metadata.

        The compression runs as a child run named ``ragcompress.compress`` of
        ``callbacks`` (a retriever passes its run's child manager), so tracers and callback
        handlers see it: inputs ``{"query", "documents"}``, outputs the kept documents and the
        call's statistics, or the error it raised.
        """
        step = RunnableLambda(self._traced, name=RUN_NAME)
        out: dict[str, Any] = step.invoke({"documents": documents, "query": query}, {"callbacks": callbacks})
        return out["documents"]

    def _traced(self, inputs: dict[str, Any]) -> dict[str, Any]:
        docs, stats = self.compress_documents_with_stats(inputs["documents"], inputs["query"])
        return {"documents": docs, "stats": stats.as_dict()}

    # -- extras ----------------------------------------------------------------------------
    def compress_documents_with_stats(
        self, documents: Sequence[Document], query: str
    ) -> tuple[list[Document], CompressionStats]:
        """Like :meth:`compress_documents`, also returning the statistics of the whole call."""
        kept, stats = compress_items(self.compressor, _to_passages(documents), query, self.budget)
        docs = [_rebuild(doc, k) for doc, k in zip(documents, kept, strict=True) if k is not None]
        return docs, stats

    def as_runnable(self) -> Runnable[dict[str, Any], list[Document]]:
        """This compressor as an LCEL step taking ``{"documents": [...], "query": str}``."""

        def run(inputs: dict[str, Any], config: RunnableConfig) -> list[Document]:
            return list(self.compress_documents(*_unpack(inputs), callbacks=config.get("callbacks")))

        async def arun(inputs: dict[str, Any], config: RunnableConfig) -> list[Document]:
            return list(await self.acompress_documents(*_unpack(inputs), callbacks=config.get("callbacks")))

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


def _to_passages(documents: Sequence[Document]) -> list[Passage]:
    """One passage per document; ids are the documents' ids (or content hashes), made unique."""
    return [p for p in to_passages(documents, _passage) if p is not None]


def _passage(i: int, doc: Document) -> Passage:
    if not isinstance(doc, Document):
        raise TypeError(f"document #{i} must be a langchain Document, got {type(doc).__name__}")
    if not isinstance(doc.page_content, str):
        raise TypeError(f"document #{i} ({doc.id!r}): page_content must be str")
    # An empty id becomes the content hash (Passage's own default).
    return Passage(text=doc.page_content, id=doc.id or "", score=_score(doc), metadata=doc.metadata)


def _rebuild(original: Document, kept: Kept) -> Document:
    return Document(
        page_content=kept.passage.text, id=original.id, metadata=kept.metadata, type=original.type
    )
