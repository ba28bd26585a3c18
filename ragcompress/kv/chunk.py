"""KV chunks: the per-layer keys/values of one passage, encoded once after the shared prefix.

A chunk is a list of :class:`ChunkLayer` objects (one per decoder layer). The dense layer
stores plain tensors; presses add compressed layer classes (quantized, low-rank, …) and
register them with :func:`register_layer` so that stores can rebuild them by name from
safetensors tensors and string metadata — never with pickle.

Invariant: every layer and head of one chunk keeps the same number of tokens, so that the
assembled cache stays rectangular.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.key import ChunkKey

__all__ = [
    "ChunkLayer",
    "DenseLayer",
    "KVChunk",
    "check_dtypes",
    "layer_class",
    "layer_classes",
    "register_layer",
]

L = TypeVar("L", bound="type[ChunkLayer]")

_LAYERS: dict[str, type[ChunkLayer]] = {}


def register_layer(name: str) -> Callable[[L], L]:
    """Class decorator: make a :class:`ChunkLayer` subclass loadable from storage as ``name``."""

    def deco(cls: L) -> L:
        old = _LAYERS.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"chunk layer name {name!r} is already registered to {old.__qualname__}")
        _LAYERS[name] = cls
        cls.layer_name = name
        return cls

    return deco


def layer_class(name: str) -> type[ChunkLayer]:
    """The layer class stored under ``name``; loads the layers package on a miss."""
    if name not in _LAYERS:
        import contextlib
        import importlib

        # Compressed layer classes register themselves when their package loads.
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module("ragcompress.kv.layers")
    try:
        return _LAYERS[name]
    except KeyError:
        raise KeyError(f"unknown chunk layer class {name!r}; known: {sorted(_LAYERS)}") from None


def layer_classes() -> list[str]:
    return sorted(_LAYERS)


class ChunkLayer(ABC):
    """One decoder layer of one chunk; ``positions`` (kv_heads, n) int: each kept token's original
    position (every layer class keeps them as a plain tensor, so they read without decoding)."""

    layer_name: str = ""
    positions: torch.Tensor

    @abstractmethod
    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(keys, values, positions)``: keys/values (kv_heads, n, head_dim); positions
        (kv_heads, n) int64, the ORIGINAL positions in the encoding frame (keys are rotated at
        these positions)."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to rebuild the layer (names are local to the layer)."""

    def meta(self) -> dict[str, str]:
        """String metadata needed to rebuild the layer (besides the tensors)."""
        return {}

    @classmethod
    @abstractmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> ChunkLayer:
        """Inverse of :meth:`tensors` / :meth:`meta`."""

    @property
    @abstractmethod
    def num_tokens(self) -> int:
        """Tokens kept per head."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def heads_dim(self) -> tuple[int, int]:
        """``(kv_heads, head_dim)`` of the keys :meth:`dense` returns. This default decodes the
        layer; classes that know their shape without decoding override it (a chunk asks its
        first layer when it is built, e.g. on every read from a store)."""
        k, _, _ = self.dense()
        return int(k.shape[0]), int(k.shape[2])

    def to(self, device: torch.device | str) -> ChunkLayer:
        """The same layer with every tensor on ``device`` (self when already there)."""
        tensors = self.tensors()
        if all(t.device == _device(device) for t in tensors.values()):
            return self
        return type(self).from_tensors({k: t.to(device) for k, t in tensors.items()}, self.meta())


def check_dtypes(
    owner: str,
    *,
    floating: Mapping[str, torch.Tensor] | None = None,
    integer: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """ValueError naming the first tensor of the wrong kind. Layers check this when they are
    built, so that one read back from a store with a valid digest but the wrong dtypes (written
    by another version, or edited) is a miss there, not an error inside a kernel mid-request."""
    import torch

    for name, t in (floating or {}).items():
        if not t.is_floating_point():
            raise ValueError(f"{owner}: {name} must be floating point, got {t.dtype}")
    for name, t in (integer or {}).items():
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{owner}: {name} must be an integer tensor, got {t.dtype}")


def _device(device: torch.device | str) -> torch.device:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@register_layer("dense")
@dataclass(frozen=True, eq=False)
class DenseLayer(ChunkLayer):
    """Plain keys/values: keys, values (kv_heads, n, head_dim); positions (kv_heads, n) int64."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor

    def __post_init__(self) -> None:
        k, v, p = self.keys, self.values, self.positions
        if k.dim() != 3 or k.shape != v.shape:
            raise ValueError(
                f"keys/values must be (kv_heads, n, head_dim) and equal, got {k.shape}, {v.shape}"
            )
        if tuple(p.shape) != tuple(k.shape[:2]):
            raise ValueError(f"positions must be (kv_heads, n) = {tuple(k.shape[:2])}, got {tuple(p.shape)}")
        check_dtypes("dense layer", floating={"keys": k, "values": v}, integer={"positions": p})
        if k.dtype != v.dtype:
            raise ValueError(f"dense layer: keys are {k.dtype}, values {v.dtype}")

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.keys, self.values, self.positions

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values, "positions": self.positions}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> DenseLayer:
        return cls(tensors["keys"], tensors["values"], tensors["positions"])

    @property
    def num_tokens(self) -> int:
        return int(self.keys.shape[1])

    def heads_dim(self) -> tuple[int, int]:
        return int(self.keys.shape[0]), int(self.keys.shape[2])


@dataclass(frozen=True, eq=False)
class KVChunk:
    """The KV of one passage, encoded after the shared prefix.

    ``token_ids`` (seq,) int64 are the passage segment's tokens; ``base_offset`` is the
    position of its first token at encoding (= prefix length); ``length`` is the original
    number of tokens (before any press evicted some).
    """

    layers: Sequence[ChunkLayer]
    token_ids: torch.Tensor
    base_offset: int
    length: int
    key: ChunkKey
    model: str  # model fingerprint (name, weights, dtype)
    kv_heads: int = field(default=0)
    head_dim: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a chunk needs at least one layer")
        counts = {layer.num_tokens for layer in self.layers}
        if len(counts) != 1:
            raise ValueError(f"every layer of a chunk must keep the same number of tokens, got {counts}")
        if not self.kv_heads or not self.head_dim:
            h, d = self.layers[0].heads_dim()
            object.__setattr__(self, "kv_heads", h)
            object.__setattr__(self, "head_dim", d)

    @property
    def num_tokens(self) -> int:
        """Tokens kept per head (≤ ``length`` when a press evicted some)."""
        return self.layers[0].num_tokens

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    @property
    def nbytes_fp16(self) -> int:
        """What the uncompressed chunk would take in fp16: K and V of every layer."""
        return 2 * 2 * len(self.layers) * self.kv_heads * self.length * self.head_dim

    @property
    def device(self) -> torch.device:
        return self.token_ids.device

    def to(self, device: torch.device | str) -> KVChunk:
        """The same chunk with every tensor on ``device``."""
        return dataclasses.replace(
            self, layers=[layer.to(device) for layer in self.layers], token_ids=self.token_ids.to(device)
        )

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> KVChunk:
        """The same chunk with ``fn`` applied to every tensor (the layers' and the token ids)."""
        layers = [
            type(layer).from_tensors({k: fn(t) for k, t in layer.tensors().items()}, layer.meta())
            for layer in self.layers
        ]
        return dataclasses.replace(self, layers=layers, token_ids=fn(self.token_ids))
