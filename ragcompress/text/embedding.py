"""Sentence embeddings with a content-addressed cache, shared by every embedding-based method.

A passage's sentence embeddings do not depend on the query, so they are cached under a hash
of (embedder, sentence texts): the second time a passage is seen, only the query is embedded.
The memory tier is an LRU bounded by entries and bytes and shared by all compressors of the
process that use the same settings (so ``sentences`` and ``redundancy`` reuse each other's
work); an optional disk tier stores one ``.npy`` file per passage (loaded with
``allow_pickle=False``, written atomically by rename).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.lru import ByteLRU
from ragcompress.text.base import TextCompressor
from ragcompress.text.split import DEFAULT_LANGUAGE, Span, check_language, segment_texts, split_sentences
from ragcompress.types import Passage

if TYPE_CHECKING:
    import numpy as np

__all__ = ["EmbeddingCache", "EmbeddingCompressor", "SentenceEmbedder", "shared_cache"]

_FORMAT = "v1"  # bump when the key or file layout changes: old entries become misses


@dataclass
class EmbeddingCache:
    """LRU of ``key -> (n_sentences, dim) float32`` arrays (:class:`~ragcompress.lru.ByteLRU`,
    bounded by ``max_entries`` and ``max_bytes``), with an optional disk tier."""

    max_entries: int = 4096
    max_bytes: int = 256 << 20
    directory: str | None = None
    hits: int = 0
    misses: int = 0
    _mem: ByteLRU[str, np.ndarray] = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.max_entries < 0 or self.max_bytes < 0:
            raise ValueError("cache bounds must be >= 0 (0 disables the memory tier)")
        self._mem = ByteLRU(self.max_bytes, lambda arr: int(arr.nbytes), self.max_entries)

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return Path(self.directory) / key[:2] / f"{key}.npy"

    def get(self, key: str, rows: int) -> np.ndarray | None:
        arr = self._mem.get(key)
        if arr is not None:
            with self._lock:
                self.hits += 1
            return arr
        if self.directory is not None:
            arr = self._load(key, rows)
            if arr is not None:
                self._remember(key, arr)
                with self._lock:
                    self.hits += 1
                return arr
        with self._lock:
            self.misses += 1
        return None

    def _load(self, key: str, rows: int) -> np.ndarray | None:
        import numpy as np

        path = self._path(key)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # absent, truncated or not an .npy file: a miss
            return None
        if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != rows:
            return None  # a stale or foreign file must never be a wrong hit
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        self._remember(key, arr)
        if self.directory is not None:
            import numpy as np

            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
                os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def _remember(self, key: str, arr: np.ndarray) -> None:
        self._mem.put(key, arr)

    def __len__(self) -> int:
        return len(self._mem)

    def clear(self) -> None:
        self._mem.clear()


@functools.lru_cache(maxsize=16)
def shared_cache(max_entries: int, max_bytes: int, directory: str | None) -> EmbeddingCache:
    """The process-wide cache for these settings (compressors configured alike share it)."""
    return EmbeddingCache(max_entries, max_bytes, directory)


@dataclass
class SentenceEmbedder:
    """Embeds groups of sentences (one group per passage) through the cache."""

    model: Any  # a sentence_transformers.SentenceTransformer
    name: str
    cache: EmbeddingCache
    batch_size: int = 64
    progress_over: int = 512  # show a tqdm bar when encoding more sentences than this
    encode_calls: int = 0
    encoded_texts: int = 0

    def key(self, sentences: Sequence[str]) -> str:
        h = hashlib.sha256(f"{_FORMAT}\x00{self.name}\x00{len(sentences)}\x00".encode())
        for s in sentences:
            h.update(s.encode("utf-8"))
            h.update(b"\x1f")
        return h.hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, shape (len(texts), dim), float32."""
        import numpy as np

        self.encode_calls += 1
        self.encoded_texts += len(texts)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > self.progress_over,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def embed_groups(self, groups: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """One (len(group), dim) array per group; cached groups cost nothing.

        Identical sentences (boilerplate, repeated lines) are encoded once per call.
        """
        keys = [self.key(g) for g in groups]
        out: list[np.ndarray | None] = [self.cache.get(k, len(g)) for k, g in zip(keys, groups, strict=False)]
        missing = [i for i, arr in enumerate(out) if arr is None]
        if missing:
            unique: dict[str, int] = {}
            for i in missing:
                for s in groups[i]:
                    unique.setdefault(s.strip(), len(unique))
            vecs = self.encode(list(unique))
            for i in missing:
                arr = vecs[[unique[s.strip()] for s in groups[i]]]
                self.cache.put(keys[i], arr)
                out[i] = arr
        return [arr for arr in out if arr is not None]

    def max_pieces(self) -> int:
        """Word pieces a sentence may have before the embedder would truncate it."""
        special = self.model.tokenizer("", add_special_tokens=True)["input_ids"]
        return int(self.model.max_seq_length) - len(special)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]  # type: ignore[misc]


@dataclass
class EmbeddingCompressor(TextCompressor):
    """Shared fields and helpers of the methods that score sentences by their embeddings.

    ``embedder``: alias, path or HF id of a sentence-transformers model (None: all-MiniLM-L6-v2).
    ``max_sentence_pieces``: longer sentences are cut (None: what the embedder reads).
    ``cache_dir``: optional folder for the disk tier of the embedding cache.
    ``language``: ISO 639 code of the texts for the sentence splitter (sentencex's rules; the
    default ``"en"`` also splits at CJK and Devanagari sentence marks).
    """

    embedder: str | None = None
    device: str | None = None
    batch_size: int = 64
    max_sentence_pieces: int | None = None
    cache_entries: int = 4096
    cache_bytes: int = 256 << 20
    cache_dir: str | None = None
    language: str = DEFAULT_LANGUAGE
    _embedder: SentenceEmbedder | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_sentence_pieces is not None and self.max_sentence_pieces < 1:
            raise ValueError(f"max_sentence_pieces must be >= 1, got {self.max_sentence_pieces}")
        check_language(self.language)

    def use_embedder(self, model: Any, name: str | None = None) -> EmbeddingCompressor:
        """Use an already loaded SentenceTransformer (``name`` keys its cache entries)."""
        name = name or f"{type(model).__name__}:{getattr(model.tokenizer, 'name_or_path', id(model))}"
        self._embedder = self._make_embedder(model, name)
        return self

    def _make_embedder(self, model: Any, name: str) -> SentenceEmbedder:
        cache = shared_cache(self.cache_entries, self.cache_bytes, self.cache_dir)
        return SentenceEmbedder(model, name, cache, self.batch_size)

    @property
    def sentence_embedder(self) -> SentenceEmbedder:
        if self._embedder is None:
            from ragcompress.models.load import DEFAULT_EMBEDDER, load_embedder

            model = load_embedder(self.embedder, self.device)
            self._embedder = self._make_embedder(model, self.embedder or DEFAULT_EMBEDDER)
        return self._embedder

    def _split(self, passages: Sequence[Passage]) -> list[list[Span]]:
        emb = self.sentence_embedder
        limit = self.max_sentence_pieces or emb.max_pieces()
        return [split_sentences(p.text, limit, emb.offsets, language=self.language) for p in passages]

    def _segments_and_embeddings(
        self, passages: Sequence[Passage]
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """Per passage: its segments and their embeddings, shape (n_segments, dim)."""
        spans = self._split(passages)
        segments = [segment_texts(p.text, s) for p, s in zip(passages, spans, strict=False)]
        return segments, self.sentence_embedder.embed_groups(segments)
