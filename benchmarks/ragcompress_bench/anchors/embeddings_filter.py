"""LangChain's ``EmbeddingsFilter`` (langchain_classic) with our MiniLM embedder.

``EmbeddingsFilter`` keeps whole documents: the top ``k`` by cosine similarity to the query
(optionally above a threshold). It has no token budget, so the target ratio is approximated
by ``k = max(1, round(target * units))``, where units are passages (one row) or sentences
(the other row: passages are split first, and the kept sentences are joined back per passage
in their original order). Thresholds are left off: a fixed threshold cannot track a ratio.
all-MiniLM-L6-v2 reads only the first 256 word pieces of a unit, so per-passage filtering
judges long passages by their beginning; the per-sentence row avoids that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragcompress.types import Passage
from ragcompress_bench.contender import Contender, Unavailable, package_version
from ragcompress_bench.data import QAExample

__all__ = ["EmbeddingsFilterPassages", "EmbeddingsFilterSentences", "MiniLMEmbeddings"]


def _langchain_embeddings_class() -> type:
    from langchain_core.embeddings import Embeddings

    class MiniLMEmbeddings(Embeddings):
        """LangChain ``Embeddings`` over ragcompress's shared sentence-transformers model."""

        def __init__(self, name: str | None = None) -> None:
            from ragcompress.models.load import load_embedder

            self.model = load_embedder(name)

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.model.encode(texts, normalize_embeddings=True).tolist()  # type: ignore[no-any-return]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    return MiniLMEmbeddings


def MiniLMEmbeddings(name: str | None = None) -> Any:
    """An instance of the LangChain wrapper (langchain_core is imported only when asked)."""
    return _langchain_embeddings_class()(name)


def _split(text: str) -> list[str]:
    try:
        from ragcompress.text.split import split_sentences

        return [text[a:b] for a, b in split_sentences(text) if text[a:b].strip()]
    except ImportError:
        import re

        return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


@dataclass
class EmbeddingsFilterPassages(Contender):
    name: str = "EmbeddingsFilter"
    embedder: str | None = None
    _embeddings: Any = field(default=None, init=False, repr=False)

    @property
    def version(self) -> str:
        return "langchain-classic " + package_version("langchain-classic")

    def setup(self) -> None:
        try:
            import langchain_classic.retrievers.document_compressors  # noqa: F401

            # compress_documents imports its stateful-document helpers from here
            import langchain_community.document_transformers  # noqa: F401
        except ImportError as err:
            raise Unavailable(
                f"cannot import {err.name} ({err}): pip install langchain-classic langchain-community"
            ) from err
        self._embeddings = MiniLMEmbeddings(self.embedder)

    def _filter(self, texts: list[str], meta: list[dict[str, Any]], query: str) -> list[Any]:
        from langchain_classic.retrievers.document_compressors import EmbeddingsFilter
        from langchain_core.documents import Document

        k = max(1, round((self.target or 1.0) * len(texts)))
        filt = EmbeddingsFilter(embeddings=self._embeddings, k=k, similarity_threshold=None)
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, meta, strict=True)]
        return list(filt.compress_documents(docs, query))

    def compress(self, example: QAExample) -> list[Passage]:
        texts = [p.text for p in example.passages]
        kept = self._filter(texts, [{"i": i} for i in range(len(texts))], example.question)
        keep = sorted(d.metadata["i"] for d in kept)
        return [example.passages[i] for i in keep]


@dataclass
class EmbeddingsFilterSentences(EmbeddingsFilterPassages):
    name: str = "EmbeddingsFilter (sentences)"

    def compress(self, example: QAExample) -> list[Passage]:
        texts: list[str] = []
        meta: list[dict[str, Any]] = []
        for i, p in enumerate(example.passages):
            for j, s in enumerate(_split(p.text)):
                texts.append(s)
                meta.append({"i": i, "j": j})
        kept = self._filter(texts, meta, example.question)
        by_passage: dict[int, list[tuple[int, str]]] = {}
        for d in kept:
            by_passage.setdefault(d.metadata["i"], []).append((d.metadata["j"], d.page_content))
        out = []
        for i in sorted(by_passage):
            text = "".join(s for _, s in sorted(by_passage[i])).strip()
            out.append(example.passages[i].with_text(text))
        return out
