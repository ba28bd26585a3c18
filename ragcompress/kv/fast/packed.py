"""GPU-resident chunks in the layout the static buffer wants.

A :class:`PackedChunk` holds every layer of one chunk in one tensor per side, keys and values
(layers, n, kv_heads, head_dim), so that writing it into the static buffer is one launch per
chunk instead of one per layer. Packing happens once, when a chunk enters the GPU tier, not per
request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.chunk import KVChunk

__all__ = ["PackedChunk"]


@dataclass(frozen=True, eq=False)
class PackedChunk:
    """Keys/values (layers, n, kv_heads, head_dim), contiguous; keys rotated at their encoding
    positions, which start at ``base_offset``. ``length`` is the original token count (≥ n when
    a press evicted tokens): the logical span the chunk occupies in the prompt."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int
    base_offset: int

    def __post_init__(self) -> None:
        k, v = self.keys, self.values
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(
                f"packed keys/values must be (layers, n, kv_heads, head_dim) and equal, got "
                f"{tuple(k.shape)} and {tuple(v.shape)}"
            )
        if not (k.is_contiguous() and v.is_contiguous()):
            raise ValueError("packed keys/values must be contiguous")
        if self.length < k.shape[1]:
            raise ValueError(f"length {self.length} is below the {k.shape[1]} tokens kept")

    @property
    def num_tokens(self) -> int:
        """Tokens kept per head (buffer slots the chunk takes)."""
        return int(self.keys.shape[1])

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    @classmethod
    def from_layers(
        cls,
        keys: Sequence[torch.Tensor],
        values: Sequence[torch.Tensor],
        length: int,
        base_offset: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> PackedChunk:
        """Stack per-layer keys/values (kv_heads, n, head_dim) into the packed layout."""
        import torch

        if len(keys) != len(values) or not keys:
            raise ValueError(f"need as many key as value layers (≥1), got {len(keys)} and {len(values)}")
        dev = keys[0].device if device is None else torch.device(device)
        dt = keys[0].dtype if dtype is None else dtype
        k = torch.stack([t.to(device=dev, dtype=dt).transpose(0, 1) for t in keys]).contiguous()
        v = torch.stack([t.to(device=dev, dtype=dt).transpose(0, 1) for t in values]).contiguous()
        return cls(k, v, length, base_offset)

    @classmethod
    def from_chunk(
        cls, chunk: KVChunk, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PackedChunk:
        """Pack a :class:`~ragcompress.kv.chunk.KVChunk` (any layer class, through ``dense()``)."""
        ks, vs = [], []
        for layer in chunk.layers:
            k, v, _ = layer.dense()
            ks.append(k)
            vs.append(v)
        return cls.from_layers(ks, vs, chunk.length, chunk.base_offset, device, dtype)

    @classmethod
    def from_prefix(
        cls, prefix: PrefixKV, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PackedChunk:
        """The shared prefix as a chunk at offset 0 (written first, never re-rotated)."""
        return cls.from_layers(prefix.keys, prefix.values, prefix.length, 0, device, dtype)
