"""Place only what a local sliding-window layer can see (Gemma 3's five of six layers).

A question starting at position ``end`` reads, at a local layer of window ``W``, only the context
slots whose logical position is above ``end - W``; decoding moves the window right, never left.
So a chunk whose whole span lies at or below ``end - W`` is never read by any local layer of this
request: its local layers need not be written. At 32K context and Gemma 3's 1K window that is
all but the last two or three 512-token chunks, for five of every six layers: most of the bytes
a cold request copies (docs/design.md, "Local sliding-window layers").

Chunks held layer by layer (stored :class:`~ragcompress.kv.chunk.KVChunk`) skip those layers;
packed chunks (every layer in one block) write them all. The engine remembers which resident
chunks lack their local layers: a later request that reuses such a chunk nearer its question
writes them then (:func:`place`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragcompress.kv.fast.packed import BufferChunk
    from ragcompress.kv.fast.rows import GatherRows

__all__ = ["LocalLayers", "place"]


@dataclass(frozen=True)
class LocalLayers:
    """``window``: the local layers' window; ``local``: their indices; ``others``: the rest."""

    window: int
    local: tuple[int, ...]
    others: tuple[int, ...]

    @classmethod
    def of(cls, arch: Any) -> LocalLayers | None:
        """From a model-family adapter; None for a family without local layers (or with local
        layers of different windows: then every layer is written)."""
        window = arch.local_window
        if window is None:
            return None
        local = tuple(i for i, w in enumerate(arch.sliding_window) if w is not None)
        others = tuple(i for i, w in enumerate(arch.sliding_window) if w is None)
        return cls(int(window), local, others)

    def far(self, position: int, length: int, end: int) -> bool:
        """Whether a chunk spanning positions ``position .. position + length - 1`` lies wholly
        out of the window of every token from ``end`` on."""
        return position + length - 1 <= end - self.window


def place(
    rows: GatherRows,
    placed: Sequence[tuple[int, BufferChunk, int, int]],
    resident: Sequence[tuple[int, BufferChunk, int, int]],
    local: LocalLayers | None,
    end: int,
    missing: frozenset[int],
) -> frozenset[int]:
    """Add the rows of a request to ``rows``.

    ``placed``: (index, chunk, first slot, first position) of the chunks written now;
    ``resident``: the same for the chunks already in the buffer; ``missing``: indices of
    resident chunks whose local layers an earlier request left out; ``end``: where the
    question starts. Returns the indices whose local layers are left out after this request.
    """
    partial: set[int] = set()
    for i, c, slot, pos in placed:
        delta = pos - c.base_offset
        if local is not None and local.far(pos, c.length, end):
            if not c.gather_layers(rows, slot, delta, local.others):
                partial.add(i)
        else:
            c.gather_into(rows, slot, delta)
    for i, c, slot, pos in resident:
        if i not in missing:
            continue
        if local is not None and local.far(pos, c.length, end):
            partial.add(i)
        else:  # now in the window: complete it
            layers = range(rows.buffer.layers) if local is None else local.local
            c.gather_layers(rows, slot, pos - c.base_offset, layers)
    return frozenset(partial)
