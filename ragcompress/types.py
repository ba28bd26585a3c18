"""Value types shared by every layer: passages, budgets and compression statistics.

All are frozen dataclasses so they can be hashed, cached and passed between
threads without defensive copies.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budget", "CompressionStats", "Passage", "content_id", "validate_passages"]

# Metadata key under which compressors record what they did to a passage.
STATS_KEY = "ragcompress"


def content_id(text: str) -> str:
    """Stable id of a text: first 16 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved passage.

    ``id`` defaults to a hash of the text so that the same content gets the same
    id wherever it comes from; compressors never change it.
    """

    text: str
    id: str = ""
    score: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.text, bytes | bytearray):
            try:
                text = bytes(self.text).decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"passage {self.id or '<no id>'!r}: bytes are not valid UTF-8 ({err.reason} "
                    f"at byte {err.start}); decode them before building a Passage"
                ) from err
            object.__setattr__(self, "text", text)
        elif not isinstance(self.text, str):
            raise TypeError(
                f"passage {self.id or '<no id>'!r}: text must be str, got {type(self.text).__name__}"
            )
        if not isinstance(self.id, str):
            object.__setattr__(self, "id", str(self.id))
        if not self.id:
            object.__setattr__(self, "id", content_id(self.text))
        if self.score is not None and not isinstance(self.score, int | float):
            raise TypeError(f"passage {self.id!r}: score must be a number or None")

    def with_text(self, text: str, **stats: Any) -> Passage:
        """Same id, score and metadata, new text; ``stats`` merge under ``metadata['ragcompress']``."""
        meta = dict(self.metadata)
        if stats:
            merged = dict(meta.get(STATS_KEY, {}))
            merged.update(stats)
            meta[STATS_KEY] = merged
        return Passage(text=text, id=self.id, score=self.score, metadata=meta)


def validate_passages(passages: Sequence[Passage] | Sequence[str]) -> list[Passage]:
    """Coerce strings to passages and reject anything else with an error naming the item.

    ``passages`` is a list (any iterable) of passages: a single string, bytes, a single
    ``Passage`` or ``None`` is refused rather than read as one passage per character.
    """
    if passages is None or isinstance(passages, str | bytes | bytearray | Passage):
        what = "None" if passages is None else f"a single {type(passages).__name__}"
        raise TypeError(f"passages must be a list of passages or strings, got {what}; wrap it in a list")
    try:
        items = iter(passages)
    except TypeError:
        raise TypeError(
            f"passages must be a list of passages or strings, got {type(passages).__name__}"
        ) from None
    out: list[Passage] = []
    for i, p in enumerate(items):
        if isinstance(p, Passage):
            out.append(p)
        elif isinstance(p, str | bytes | bytearray):
            out.append(Passage(text=p))  # type: ignore[arg-type]
        else:
            raise TypeError(f"passage #{i} must be a ragcompress.Passage or str, got {type(p).__name__}")
    return out


@dataclass(frozen=True, slots=True)
class Budget:
    """How much context to keep: a ratio of the input tokens or an absolute token target.

    Exactly one of ``ratio`` (0 < ratio <= 1, the fraction kept) or ``tokens`` (> 0) is set.
    """

    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.tokens is None):
            raise ValueError("Budget takes exactly one of ratio= or tokens=")
        # written so that NaN fails the range check too
        if self.ratio is not None and not (0.0 < self.ratio <= 1.0):
            why = "above 1 would keep more than all" if self.ratio > 1.0 else "0 or less would keep nothing"
            raise ValueError(f"Budget ratio is the share of tokens kept, in (0, 1]; got {self.ratio}: {why}")
        if self.tokens is not None and (isinstance(self.tokens, bool) or self.tokens <= 0):
            raise ValueError(f"Budget tokens must be a positive int, got {self.tokens}")

    @classmethod
    def coerce(cls, value: Budget | float | int | None, default_ratio: float = 1.0) -> Budget:
        """``None`` → default ratio; a float in (0, 1] → ratio; an int > 1 → token target."""
        if value is None:
            return cls(ratio=default_ratio)
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool):
            raise TypeError("budget must be a Budget, a ratio or a token count, not bool")
        if isinstance(value, int) and value > 1:
            return cls(tokens=value)
        return cls(ratio=float(value))

    def target(self, total_tokens: int) -> int:
        """Tokens that may be kept out of ``total_tokens`` (at least 1 when there is input)."""
        if total_tokens <= 0:
            return 0
        if self.tokens is not None:
            return min(self.tokens, total_tokens)
        assert self.ratio is not None
        return max(1, math.floor(total_tokens * self.ratio + 1e-9))

    def spec(self) -> dict[str, Any]:
        return {"ratio": self.ratio} if self.ratio is not None else {"tokens": self.tokens}


@dataclass(frozen=True, slots=True)
class CompressionStats:
    """What one ``compress`` call did, over all passages."""

    compressor: str
    tokens_before: int
    tokens_after: int
    passages_before: int
    passages_after: int
    latency_ms: float
    dropped: Mapping[str, str] = field(default_factory=dict)  # passage id -> reason

    @property
    def ratio(self) -> float:
        """Compression ratio as ``before / after`` (2.0 means half the tokens); inf when all dropped."""
        if self.tokens_after == 0:
            return math.inf if self.tokens_before else 1.0
        return self.tokens_before / self.tokens_after

    def as_dict(self) -> dict[str, Any]:
        return {
            "compressor": self.compressor,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "passages_before": self.passages_before,
            "passages_after": self.passages_after,
            "ratio": self.ratio,
            "latency_ms": self.latency_ms,
            "dropped": dict(self.dropped),
        }
