"""Content-addressed chunk keys.

A key covers everything that changes a chunk's tensors: the model (name, a fingerprint of
its config and of a deterministic sample of its weights, dtype), the prompt layout (tokenizer
and shared prefix), the presses' specs, the storage format version and the passage's token
ids. Any change gives another key: a miss, never a wrong hit.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["FORMAT_VERSION", "ChunkKey", "model_fingerprint", "press_fingerprint", "tokens_digest"]

# Bump when the meaning of stored tensors or metadata changes; old files then miss.
# 2: the stored digest covers the header (key, offsets, layer metadata) as well as the tensors.
FORMAT_VERSION = 2

# Elements sampled from each parameter: enough to tell fine-tuned or re-seeded weights apart,
# cheap enough (a strided gather per tensor) for an 8B model on the GPU.
_SAMPLES_PER_TENSOR = 64

_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def model_fingerprint(model: PreTrainedModel) -> str:
    """``name:hash`` of the model's config, dtype and a strided sample of every parameter."""
    cached = _FINGERPRINTS.get(model)
    if cached is not None:
        return cached
    import torch

    h = hashlib.sha256()
    h.update(model.config.to_json_string(use_diff=False).encode())
    h.update(str(model.dtype).encode())
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
            sample = flat[::step][:_SAMPLES_PER_TENSOR].float().cpu()
            h.update(name.encode())
            h.update(str(tuple(param.shape)).encode())
            h.update(sample.numpy().tobytes())
    name = str(getattr(model.config, "name_or_path", "") or type(model).__name__).replace(":", "_")
    fp = f"{name}:{h.hexdigest()[:16]}"
    _FINGERPRINTS[model] = fp
    return fp


def press_fingerprint(presses: Sequence[Any]) -> str:
    """Canonical JSON of the presses' specs (``"[]"`` without presses)."""
    from ragcompress.registry import spec_of

    return json.dumps([spec_of(p) for p in presses], sort_keys=True, separators=(",", ":"))


def tokens_digest(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([int(t) for t in token_ids]).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """What identifies a chunk. ``digest`` is the storage address."""

    model: str  # model_fingerprint(...)
    layout: str  # PromptLayout.fingerprint()
    presses: str  # press_fingerprint(...)
    tokens: str  # tokens_digest(passage ids)
    format: int = FORMAT_VERSION

    @property
    def digest(self) -> str:
        payload = json.dumps(
            [self.model, self.layout, self.presses, self.tokens, self.format], separators=(",", ":")
        )
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
