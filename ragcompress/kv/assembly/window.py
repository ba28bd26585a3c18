"""Local sliding-window layers at assembly: what a :class:`Context` needs to mask them.

A family with local layers (Gemma 3) gives each of them a window: a query at logical position
``q`` sees keys at ``q - window < p <= q``. Chunks keep every token in every layer (a chunk can
be placed anywhere, and ``blend``-style recomputation of a token needs the keys before it), so
the window is applied when the question reads the context, by each slot's *logical* position:
a re-positioned chunk, an ``ape`` placement or an evicting press make slots and positions differ,
and transformers' own sliding layers count slots. A slot's position is the newest any layer or
head holds there (evicting presses may keep different tokens per head): a slot is hidden only
when every token in it is out of the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragcompress.kv.chunk import KVChunk
    from ragcompress.models.arch import ModelArch

__all__ = ["local_window"]


def local_window(
    arch: ModelArch, prefix_len: int, chunks: Sequence[KVChunk], starts: Sequence[int], device: Any
) -> dict[str, Any]:
    """``{"window": ..., "positions": (slots,) int64}`` for :class:`~ragcompress.kv.assembly.Context`
    when ``arch`` has local layers (prefix slots then each chunk's kept tokens at ``starts``),
    else ``{}``."""
    window = arch.local_window
    if window is None:
        return {}
    from ragcompress.kv.assembly.recompute import slot_map

    return {"window": window, "positions": slot_map(prefix_len, chunks, starts, device).positions}
