"""Assembly: shared-prefix KV + chunks in retrieval order → a transformers ``DynamicCache``.

Chunk ``j`` starts at ``start_j = prefix_len + sum(length of chunks before j)`` (original
lengths, so a compressed chunk leaves its evicted positions empty) and a kept token encoded
at position ``p`` moves to ``start_j + (p - base_offset)``: every key of the chunk is
re-rotated by the same ``start_j - base_offset``. The question is then prefilled at
``next_position`` = prefix_len + sum of original chunk lengths.

That is the ``concat`` placement; :func:`assemble` takes other ``starts`` (APE puts every chunk at
``prefix_len``, where it was encoded: no key moves) and returns the position after the furthest
chunk end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.prefix import PrefixKV  # re-exported: its home before kv/prefix.py
from ragcompress.models.rope import Rotary, rotate_by

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PretrainedConfig

    from ragcompress.models.arch import ModelArch

__all__ = ["PrefixKV", "assemble", "concat_starts"]


def assemble(
    prefix: PrefixKV,
    chunks: Sequence[KVChunk],
    rope: ModelArch | Rotary,
    config: PretrainedConfig | None = None,
    starts: Sequence[int] | None = None,
) -> tuple[DynamicCache, int]:
    """Build the cache (batch 1) on the prefix's device and dtype; returns ``(cache, next_position)``.

    ``rope``: the model's :class:`~ragcompress.models.arch.ModelArch` (keys of layer ``i`` move
    with its table for layer ``i``), or one :class:`Rotary` used for every layer.

    ``starts``: logical position of each chunk's first token (default: one after the other, after
    the prefix); ``next_position`` is the largest ``start_j + length_j`` (the prefix length if none).
    """
    import numpy as np
    import torch
    from transformers import DynamicCache

    for i, c in enumerate(chunks):
        if c.model != prefix.model or c.key.layout != prefix.layout:
            raise ValueError(
                f"chunk #{i} was encoded for model {c.model!r} / layout {c.key.layout!r}, "
                f"not for this generator ({prefix.model!r} / {prefix.layout!r})"
            )
        if c.base_offset != prefix.length:
            raise ValueError(
                f"chunk #{i} was encoded at offset {c.base_offset}, the prefix has {prefix.length}"
            )
    if starts is None:
        starts = concat_starts(prefix.length, chunks)
    elif len(starts) != len(chunks):
        raise ValueError(f"starts has {len(starts)} entries for {len(chunks)} chunks")
    pos = max([prefix.length, *(s + c.length for s, c in zip(starts, chunks, strict=True))])
    device, dtype = prefix.keys[0].device, prefix.keys[0].dtype
    # Every kept token of chunk j moves by the same start_j - base_offset, in every layer (all
    # layers keep the same tokens): one per-token cos/sin table per RoPE table of the family
    # (prefix tokens move by 0, an exact identity in fp32) serves all its layers, and each layer
    # is one concatenation and one rotation instead of a rotation per chunk per layer
    # (launch-bound on a GPU).
    counts = [prefix.length] + [c.layers[0].num_tokens if c.layers else 0 for c in chunks]
    moves = [0] + [start - c.base_offset for c, start in zip(chunks, starts, strict=True)]
    # numpy: torch's CPU repeat_interleave wakes a thread pool (milliseconds on a many-core host)
    deltas = torch.from_numpy(np.repeat(np.asarray(moves, dtype=np.int64), counts)).to(device)
    rotaries = [rope] * len(prefix.keys) if isinstance(rope, Rotary) else [Rotary.of(s) for s in rope.rope]
    tables = {id(r): r.cos_sin(deltas) for r in rotaries} if any(moves) else {}
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for li in range(len(prefix.keys)):
        ks, vs = [prefix.keys[li]], [prefix.values[li]]
        for c in chunks:
            k, v, _ = c.layers[li].dense()
            ks.append(k.to(device=device, dtype=dtype))
            vs.append(v.to(device=device, dtype=dtype))
        k = torch.cat(ks, dim=1)
        if tables:
            k = rotate_by(k, *tables[id(rotaries[li])])
        layers.append((k[None], torch.cat(vs, dim=1)[None]))
    if not isinstance(rope, Rotary) and rope.local_window is not None:
        # Local layers keep every slot: transformers' sliding layer would keep the last
        # window - 1 *slots*, while the window is by logical position (the Context masks it).
        config = None
    return DynamicCache(ddp_cache_data=layers, config=config), pos


def concat_starts(prefix_len: int, chunks: Sequence[KVChunk]) -> list[int]:
    """Start position of each chunk when they follow each other after the prefix (original lengths)."""
    starts, pos = [], prefix_len
    for c in chunks:
        starts.append(pos)
        pos += c.length
    return starts
