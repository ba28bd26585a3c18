"""Dense retrieval with FAISS: exact inner-product search over L2-normalized sentence embeddings
(cosine similarity), saved as a FAISS index file plus a JSON list of passages (never pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.types import Passage, validate_passages

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FaissRetriever", "IndexFormatError"]

_INDEX_FILE = "index.faiss"
_PASSAGES_FILE = "passages.json"
_FORMAT = 1


class IndexFormatError(ValueError):
    """An index folder is missing, incomplete or was built by something else."""


@dataclass
class FaissRetriever:
    """Exact cosine-similarity search (``faiss.IndexFlatIP`` over normalized embeddings).

    ``embedder`` is an alias, a local path or an HF id of a sentence-transformers model
    (``None``: the packaged all-MiniLM-L6-v2). Build with :meth:`from_passages`, reopen with
    :meth:`load`.
    """

    embedder: str | None = None
    device: str | None = None
    batch_size: int = 64
    progress_over: int = 256  # a tqdm bar when embedding more passages than this (indexing a corpus)
    passages: list[Passage] = field(default_factory=list, repr=False)
    _index: Any = field(default=None, init=False, repr=False)

    @classmethod
    def from_passages(cls, passages: Sequence[Passage] | Sequence[str], **kwargs: Any) -> FaissRetriever:
        """Embed ``passages`` and index them; empty or whitespace-only passages are rejected."""
        retriever = cls(**kwargs)
        retriever.add(passages)
        return retriever

    def add(self, passages: Sequence[Passage] | Sequence[str]) -> None:
        """Embed and append passages to the index (ids must be unique across the index)."""
        import faiss

        clean = validate_passages(passages)
        seen = {p.id for p in self.passages}
        for p in clean:
            if not p.text.strip():
                raise ValueError(f"passage {p.id!r} is empty; remove it before indexing")
            if p.id in seen:
                raise ValueError(f"passage id {p.id!r} occurs twice; ids must be unique in an index")
            seen.add(p.id)
        if not clean:
            return
        vectors = self._embed([p.text for p in clean])
        if self._index is None:
            self._index = faiss.IndexFlatIP(vectors.shape[1])
        elif self._index.d != vectors.shape[1]:
            raise ValueError(
                f"embedder gives {vectors.shape[1]}-d vectors, the index holds {self._index.d}-d"
            )
        self._index.add(vectors)
        self.passages.extend(clean)

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, query: str, k: int = 4) -> list[Passage]:
        """The ``k`` passages most similar to ``query``, best first, with ``score`` = cosine."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self._index is None or not self.passages:
            raise IndexFormatError("the index is empty; add passages first")
        scores, rows = self._index.search(self._embed([query]), min(k, len(self.passages)))
        return [
            Passage(text=p.text, id=p.id, score=float(s), metadata=p.metadata)
            for s, r in zip(scores[0], rows[0], strict=True)
            if r >= 0
            for p in (self.passages[int(r)],)
        ]

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Float32 unit vectors, shape (len(texts), dim)."""
        import numpy as np

        from ragcompress.models.load import load_embedder

        model = load_embedder(self.embedder, self.device)
        vecs = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > self.progress_over,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    # -- persistence -------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss`` and ``passages.json`` into ``directory`` (created if needed)."""
        import faiss

        if self._index is None:
            raise IndexFormatError("nothing to save: the index is empty")
        out = Path(directory).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "embedder": self.embedder,
            "dim": int(self._index.d),
            "passages": [{"id": p.id, "text": p.text, "metadata": dict(p.metadata)} for p in self.passages],
        }
        # temp file + rename so a crash never leaves a half-written index next to a valid one
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".faiss.tmp")
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            os.replace(tmp, out / _INDEX_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _atomic_write_text(out / _PASSAGES_FILE, json.dumps(meta, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> FaissRetriever:
        """Reopen an index written by :meth:`save`; queries use the embedder it was built with."""
        import faiss

        root = Path(directory).expanduser()
        for name in (_INDEX_FILE, _PASSAGES_FILE):
            if not (root / name).is_file():
                raise IndexFormatError(f"{str(root)!r} is not a ragcompress index: {name} is missing")
        try:
            meta = json.loads((root / _PASSAGES_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise IndexFormatError(f"{str(root / _PASSAGES_FILE)!r} is not valid JSON: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise IndexFormatError(f"{str(root)!r}: unknown index format {meta.get('format')!r}")
        index = faiss.read_index(str(root / _INDEX_FILE))
        passages = [
            Passage(text=r["text"], id=r["id"], metadata=r.get("metadata", {})) for r in meta["passages"]
        ]
        if index.ntotal != len(passages) or index.d != meta.get("dim"):
            raise IndexFormatError(
                f"{str(root)!r}: index holds {index.ntotal} vectors of dim {index.d}, "
                f"passages.json lists {len(passages)} passages of dim {meta.get('dim')}"
            )
        retriever = cls(embedder=meta.get("embedder"), device=device, passages=passages)
        retriever._index = index
        return retriever


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
