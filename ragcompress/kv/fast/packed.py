"""GPU-resident chunks in the layout the static buffer wants.

Every chunk kind the buffer takes is a :class:`BufferChunk`: it checks that it fits a buffer
and adds its tensors to the request's :class:`~ragcompress.kv.fast.rows.GatherRows`, so the
writer (:mod:`ragcompress.kv.fast.write`) never asks which kind it holds.

A :class:`PackedChunk` holds every layer of one chunk in one tensor per side, keys and values
(n, layers, kv_heads, head_dim) — the buffer's token-major layout — so that writing it into the
static buffer is one launch over one contiguous block per chunk instead of one per layer.
:class:`QuantizedPackedChunk` does the same for int4/int8 chunks: every layer's codes stacked
as extra KV heads, dequantized and re-rotated by one launch of the fused kernel. Packing
happens once, when a chunk enters the GPU tier, not per
request.

A chunk also knows each slot's logical position in its encoding frame
(:meth:`BufferChunk.slot_positions`): local sliding-window layers mask by it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.buffer import StaticKVBuffer
    from ragcompress.kv.fast.rows import GatherRows
    from ragcompress.kv.kernels import QuantizedKV

__all__ = ["BufferChunk", "PackedChunk", "QuantizedPackedChunk", "held_positions"]


def held_positions(layers: Sequence[Any]) -> torch.Tensor:
    """(n,) int64: per slot, the newest encoding position any layer or head keeps there (layers
    of one chunk, each with ``positions`` (kv_heads, n); an evicting press may keep different
    tokens per head). The position a local window tests: a slot is hidden only when every
    token in it is out of the window (as the eager path's assembly does)."""
    import torch

    return torch.stack([layer.positions.to(torch.long) for layer in layers]).amax(dim=(0, 1))


class BufferChunk(ABC):
    """A chunk the static buffer's context takes. ``length``: the logical span it occupies in
    the prompt (≥ the tokens kept when a press evicted some); ``base_offset``: the position
    its keys were rotated at."""

    length: int
    base_offset: int

    @property
    @abstractmethod
    def num_tokens(self) -> int:
        """Tokens kept per head (buffer slots the chunk takes)."""

    @abstractmethod
    def check(self, buffer: StaticKVBuffer, what: str) -> None:
        """Raise ``ValueError`` naming ``what`` when this chunk cannot go into ``buffer``
        (other layer/head shape, another device): before any slot is reserved."""

    @abstractmethod
    def gather_into(self, rows: GatherRows, slot: int, delta: int) -> None:
        """Add this chunk's tensors to ``rows``: its tokens go to the context slots
        ``slot ..``, its keys move by ``delta`` positions."""

    def gather_layers(self, rows: GatherRows, slot: int, delta: int, layers: Sequence[int]) -> bool:
        """:meth:`gather_into` for at least the layers ``layers``; returns whether every layer
        was added. Here every layer is (the chunk's layers share one block); a chunk held layer
        by layer adds only those (local sliding-window layers skip chunks out of their window)."""
        self.gather_into(rows, slot, delta)
        return True

    def slot_positions(self) -> torch.Tensor | None:
        """(num_tokens,) int64: each slot's logical position in the encoding frame (before the
        move); None (the default) when they are consecutive from ``base_offset`` (nothing
        evicted), which the writer fills without a tensor per chunk."""
        return None


def _stacked_row(buffer: StaticKVBuffer, slot: int) -> int:
    """The first destination row of slot ``slot`` (all layers and heads)."""
    return slot * buffer.layers * buffer.kv_heads


@dataclass(frozen=True, eq=False)
class PackedChunk(BufferChunk):
    """Keys/values (n, layers, kv_heads, head_dim), contiguous; keys rotated at their encoding
    positions, which start at ``base_offset``. ``length`` is the original token count (≥ n when
    a press evicted tokens): the logical span the chunk occupies in the prompt. ``positions``
    (n,) int64: each slot's encoding position (:func:`held_positions`), None when the n tokens
    are consecutive from ``base_offset``."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int
    base_offset: int
    positions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        k, v = self.keys, self.values
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(
                f"packed keys/values must be (n, layers, kv_heads, head_dim) and equal, got "
                f"{tuple(k.shape)} and {tuple(v.shape)}"
            )
        if not (k.is_contiguous() and v.is_contiguous()):
            raise ValueError("packed keys/values must be contiguous")
        if self.length < k.shape[0]:
            raise ValueError(f"length {self.length} is below the {k.shape[0]} tokens kept")
        if self.positions is not None and tuple(self.positions.shape) != (k.shape[0],):
            raise ValueError(f"positions must be ({k.shape[0]},), got {tuple(self.positions.shape)}")

    @cached_property
    def num_tokens(self) -> int:
        """Tokens kept per head (buffer slots the chunk takes). Asked once: a placement asks
        every chunk of a request, and a tensor's shape costs ~0.5 µs on the host each time."""
        return int(self.keys.shape[0])

    def slot_positions(self) -> torch.Tensor | None:
        return self.positions

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def check(self, buffer: StaticKVBuffer, what: str) -> None:
        want = (buffer.layers, buffer.kv_heads, buffer.head_dim)
        got = tuple(self.keys.shape[1:])
        if got != want:
            raise ValueError(f"{what} has (layers, kv_heads, head_dim) = {got}, the buffer {want}")
        if self.keys.device != buffer.ctx_keys.device:
            raise ValueError(f"{what} is on {self.keys.device}, the buffer on {buffer.ctx_keys.device}")

    def gather_into(self, rows: GatherRows, slot: int, delta: int) -> None:
        # token-major like the context: one run of consecutive rows
        n = self.keys.shape[0] * self.keys.shape[1] * self.keys.shape[2]
        rows.add_dense(self.keys, self.values, _stacked_row(rows.buffer, slot), n, 1, delta)

    @classmethod
    def from_layers(
        cls,
        keys: Sequence[torch.Tensor],
        values: Sequence[torch.Tensor],
        length: int,
        base_offset: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        positions: torch.Tensor | None = None,
    ) -> PackedChunk:
        """Stack per-layer keys/values (kv_heads, n, head_dim) into the packed layout;
        ``positions``: see the class."""
        import torch

        if len(keys) != len(values) or not keys:
            raise ValueError(f"need as many key as value layers (≥1), got {len(keys)} and {len(values)}")
        dev = keys[0].device if device is None else torch.device(device)
        dt = keys[0].dtype if dtype is None else dtype
        k = torch.stack([t.to(device=dev, dtype=dt).transpose(0, 1) for t in keys], dim=1).contiguous()
        v = torch.stack([t.to(device=dev, dtype=dt).transpose(0, 1) for t in values], dim=1).contiguous()
        return cls(k, v, length, base_offset, positions)

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
        pos = held_positions(chunk.layers)
        return cls.from_layers(ks, vs, chunk.length, chunk.base_offset, device, dtype, pos.to(ks[0].device))

    @classmethod
    def from_prefix(
        cls, prefix: PrefixKV, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PackedChunk:
        """The shared prefix as a chunk at offset 0 (written first, never re-rotated)."""
        return cls.from_layers(prefix.keys, prefix.values, prefix.length, 0, device, dtype)


@dataclass(frozen=True, eq=False)
class QuantizedPackedChunk(BufferChunk):
    """A quantized chunk with its layers stacked as heads: ``kv`` has layers * kv_heads heads
    (head ``l * kv_heads + h`` is head ``h`` of layer ``l``), in the format of
    :mod:`ragcompress.kv.kernels.quant_format`. ``positions``: as :class:`PackedChunk`'s."""

    kv: QuantizedKV
    layers: int
    length: int
    base_offset: int
    positions: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.kv.num_tokens

    def slot_positions(self) -> torch.Tensor | None:
        return self.positions

    @property
    def nbytes(self) -> int:
        kv = self.kv
        return sum(t.numel() * t.element_size() for t in kv.tensors())

    def check(self, buffer: StaticKVBuffer, what: str) -> None:
        h, kv = buffer.kv_heads, self.kv
        if self.layers != buffer.layers or kv.kv_heads != self.layers * h or kv.head_dim != buffer.head_dim:
            raise ValueError(
                f"{what} has {self.layers} layers / {kv.kv_heads} stacked heads of {kv.head_dim}; "
                f"the buffer {buffer.layers} layers of {h} heads of {buffer.head_dim}"
            )
        if kv.key_codes.device != buffer.ctx_keys.device:
            raise ValueError(f"{what} is on {kv.key_codes.device}, the buffer on {buffer.ctx_keys.device}")

    def gather_into(self, rows: GatherRows, slot: int, delta: int) -> None:
        rows.add_quantized(self.kv, 0, slot, delta)  # every layer's heads, from head 0

    @classmethod
    def from_chunk(cls, chunk: KVChunk, device: torch.device | str | None = None) -> QuantizedPackedChunk:
        """Stack a chunk whose layers are all quantized alike (e.g. knorm + int4)."""
        import torch

        from ragcompress.kv.kernels import QuantizedKV

        kvs = []
        for i, layer in enumerate(chunk.layers):
            get = getattr(layer, "quantized_kv", None)
            if get is None:
                raise ValueError(f"layer {i} of the chunk is {type(layer).__name__}, not quantized")
            kvs.append(get())
        if len({(kv.bits, kv.group) for kv in kvs}) != 1:
            raise ValueError("every layer of the chunk must use the same bits and group size")
        dev = kvs[0].key_codes.device if device is None else torch.device(device)
        names = ("key_codes", "key_scale", "key_zero", "value_codes", "value_scale", "value_zero")
        stacked = {n: torch.cat([getattr(kv, n) for kv in kvs]).to(dev).contiguous() for n in names}
        kv = QuantizedKV(**stacked, bits=kvs[0].bits, group=kvs[0].group)
        return cls(kv, len(kvs), chunk.length, chunk.base_offset, held_positions(chunk.layers).to(dev))
