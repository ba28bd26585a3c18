"""Content-addressed chunk keys.

A key covers everything that changes a chunk's tensors: the model (name, an exact hash of
its config, dtype and weights: :mod:`ragcompress.kv.fingerprint`), the prompt layout (tokenizer
and shared prefix), the presses' specs, the storage format version and the passage's token
ids. Any change gives another key: a miss, never a wrong hit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from ragcompress.kv.fingerprint import model_fingerprint

__all__ = ["FORMAT_VERSION", "ChunkKey", "model_fingerprint", "tokens_digest"]

# Bump when the meaning of stored tensors or metadata changes; old files then miss.
# 2: the stored digest covers the header (key, offsets, layer metadata) as well as the tensors.
# 3: that checksum is XXH3-128, not SHA-256 (the key, and so the file's address, changes with it:
#    a store simply misses format-2 files, and an older version sharing the store misses ours).
FORMAT_VERSION = 3


def tokens_digest(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([int(t) for t in token_ids]).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """What identifies a chunk. ``digest`` is the storage address."""

    model: str  # model_fingerprint(...)
    layout: str  # PromptLayout.fingerprint()
    presses: str  # kv.presses.protocol.press_fingerprint(...)
    tokens: str  # tokens_digest(passage ids)
    format: int = FORMAT_VERSION
    # the fields' hash, taken once: a key is looked up in the GPU pool for every chunk of every
    # request before its step, and hashing five fields each time was ~0.4 us a chunk
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self._values()))

    def _values(self) -> tuple[str, str, str, str, int]:
        return self.model, self.layout, self.presses, self.tokens, self.format

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[ChunkKey], tuple[str, str, str, str, int]]:
        # rebuilt from its fields (pickle, copy): a string's hash differs between processes, so
        # the cached hash must never travel with the key
        return ChunkKey, self._values()

    @property
    def digest(self) -> str:
        payload = json.dumps(self._values(), separators=(",", ":"))  # a JSON array, as stored
        return hashlib.sha256(payload.encode()).hexdigest()

    def fields(self) -> dict[str, str]:
        """String fields as stored in file metadata."""
        return {
            "key.model": self.model,
            "key.layout": self.layout,
            "key.presses": self.presses,
            "key.tokens": self.tokens,
            "key.format": str(self.format),
        }

    @classmethod
    def from_fields(cls, meta: dict[str, str]) -> ChunkKey:
        return cls(
            model=meta["key.model"],
            layout=meta["key.layout"],
            presses=meta["key.presses"],
            tokens=meta["key.tokens"],
            format=int(meta["key.format"]),
        )

    def tokens_mismatch(self, token_ids: Sequence[int]) -> str | None:
        """Why ``token_ids`` (read from storage) are not this key's passage tokens, or None."""
        if tokens_digest(token_ids) != self.tokens:
            return "stored token ids differ from the key's passage tokens"
        return None

    def mismatch(self, other: ChunkKey) -> str | None:
        """Why ``other`` (read from storage) is not this key, or None when it is."""
        if other.format != self.format:
            return f"foreign format version {other.format} (expected {self.format})"
        if other.model != self.model:
            return f"other model {other.model!r} (expected {self.model!r})"
        if other.layout != self.layout:
            return "other prompt layout/tokenizer"
        if other.presses != self.presses:
            return "other presses"
        if other.tokens != self.tokens:
            return "other passage tokens"
        return None
