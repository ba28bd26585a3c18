"""Argument checks at the public entry points (:class:`~ragcompress.generate.Generator` and the
KV answerers): bad input fails at once with a ``TypeError``/``ValueError`` naming the argument,
before any model runs or any chunk is looked up.

``max_new_tokens=0`` is allowed and documented: nothing is generated and the answer is empty
(on the KV path the chunks are still looked up and encoded, which warms the cache).
"""

from __future__ import annotations

from collections.abc import Sequence

from ragcompress.types import Passage, validate_passages

__all__ = ["check_max_new_tokens", "check_query", "check_request"]


def check_query(query: object, name: str = "query") -> str:
    """``query`` itself when it is a ``str``; ``None``, bytes and anything else are refused
    (a ``None`` question would otherwise be answered as the text "None")."""
    if isinstance(query, bytes | bytearray):
        raise TypeError(f"{name} must be str, got {type(query).__name__}: decode it first")
    if not isinstance(query, str):
        raise TypeError(f"{name} must be str, got {type(query).__name__}")
    return query


def check_max_new_tokens(value: object, name: str = "max_new_tokens") -> int | None:
    """``None`` (the generator's default) or an int >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_request(
    query: object, passages: Sequence[Passage] | Sequence[str], max_new_tokens: object
) -> list[Passage]:
    """Check one request's arguments; the passages, coerced (strings become passages)."""
    check_query(query)
    check_max_new_tokens(max_new_tokens)
    return validate_passages(passages)
