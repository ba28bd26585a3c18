"""Identity-keeping mapping between a framework's items and ragcompress passages.

The LangChain and LlamaIndex adapters share it: each input item (document, node) becomes at
most one ``Passage`` with an id unique within the call, and each passage the compressor keeps
maps back to its own item, with the item's metadata plus what the compressor did under
``metadata["ragcompress"]``. Items are never joined into one string and split again, which is
how the LLMLingua adapters lose per-item scores and metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ragcompress.registry import build
from ragcompress.types import STATS_KEY, Budget, CompressionStats, Passage

__all__ = ["Kept", "checked_budget", "compress_items", "text_compressor", "to_passages"]

T = TypeVar("T")


@dataclass(frozen=True)
class Kept:
    """One item the compressor kept: its compressed passage (id as sent) and the item's own
    metadata with the per-item statistics merged under ``STATS_KEY``."""

    passage: Passage
    metadata: dict[str, Any]


def text_compressor(value: Any) -> Any:
    """``value`` built with ``ragcompress.build`` if it is a spec (dict, JSON string, name, list
    of specs); TypeError unless the result is a text compressor (has ``compress_with_stats``)."""
    if isinstance(value, dict | str | list | tuple):
        value = build(value, kind="text")  # a press fails here naming both kinds
    if not callable(getattr(value, "compress_with_stats", None)):
        raise TypeError(
            "compressor must be a ragcompress text compressor (with compress_with_stats) or a spec "
            f"that ragcompress.build accepts, got {type(value).__name__}"
        )
    return value


def checked_budget(value: Any) -> Any:
    """``value`` unchanged, after ``Budget.coerce`` accepted it (so a bad budget fails at
    construction, with ragcompress's own message)."""
    Budget.coerce(value)
    return value


def to_passages(items: Sequence[T], passage_of: Callable[[int, T], Passage | None]) -> list[Passage | None]:
    """One slot per item: ``passage_of(index, item)`` with its id made unique, or None where
    ``passage_of`` returns None (an item with no text, passed around the compressor).

    ``passage_of`` raises, naming the item, for an item the adapter cannot read.
    """
    slots: list[Passage | None] = []
    used: set[str] = set()
    for i, item in enumerate(items):
        passage = passage_of(i, item)
        if passage is not None:
            # The same item can come back twice (e.g. from an ensemble or fusion retriever);
            # each copy is its own input and gets its own output, so the passage ids must differ.
            pid, k = passage.id, 1
            while pid in used:
                pid, k = f"{passage.id}#{k}", k + 1
            used.add(pid)
            if pid != passage.id:
                passage = dataclasses.replace(passage, id=pid)
        slots.append(passage)
    return slots


def compress_items(
    compressor: Any, slots: Sequence[Passage | None], query: str, budget: Budget | float | int | None
) -> tuple[list[Kept | None], CompressionStats]:
    """Run ``compressor.compress_with_stats`` on the passages of ``slots`` and map the result back.

    Returns one entry per slot, in slot order: ``Kept`` where the compressor kept the passage,
    None where it dropped it or the slot was None. Raises ``ValueError`` if the compressor
    returns a passage that was not an input, or one passage twice.
    """
    passages = [p for p in slots if p is not None]
    result = compressor.compress_with_stats(passages, query, budget)
    stats: CompressionStats = result.stats
    position = {p.id: i for i, p in enumerate(passages)}
    by_id: dict[str, Passage] = {}
    for p in result.passages:
        if p.id not in position or p.id in by_id:
            problem = "twice" if p.id in by_id else "but it was not an input"
            raise ValueError(f"compressor {stats.compressor!r} returned passage {p.id!r} {problem}")
        by_id[p.id] = p
    originals = [passages[position[pid]] for pid in by_id]
    counts = _token_counts(compressor, [p.text for p in originals], [p.text for p in by_id.values()])
    batch = {k: v for k, v in stats.as_dict().items() if k != "dropped"}
    kept: dict[str, Kept] = {}
    for original, (before, after) in zip(originals, counts, strict=True):
        passage = by_id[original.id]
        meta = dict(original.metadata)
        merged: dict[str, Any] = dict(meta.get(STATS_KEY, {}))
        merged.update(passage.metadata.get(STATS_KEY, {}))
        merged.update(compressor=stats.compressor, tokens_before=before, tokens_after=after, batch=batch)
        meta[STATS_KEY] = merged
        kept[original.id] = Kept(passage, meta)
    return [None if p is None else kept.get(p.id) for p in slots], stats


def _token_counts(compressor: Any, before: list[str], after: list[str]) -> list[tuple[int, int]]:
    """(tokens before, tokens after) of each kept item, with the compressor's tokenizer."""
    if not after:
        return []
    from ragcompress.text.base import TokenCounter

    counts = TokenCounter(getattr(compressor, "tokenizer", None)).many(before + after)
    return list(zip(counts[: len(before)], counts[len(before) :], strict=True))
