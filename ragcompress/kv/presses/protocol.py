"""The KV press protocol: a query-agnostic compressor of one layer of one chunk.

A press is a registered dataclass (``@register(name, kind="press")``) whose fields are its
configuration; its spec goes into the chunk key. The encoder calls it once per layer with
the dense layer; it returns any :class:`~ragcompress.kv.chunk.ChunkLayer` (dense with fewer
tokens, quantized, low-rank, …). Every layer and head must keep the same number of tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import ChunkLayer, DenseLayer

__all__ = ["KVPress", "build_presses", "press_fingerprint"]


@runtime_checkable
class KVPress(Protocol):
    # True when the press scores tokens by attention: the encoder then runs the model with
    # eager attention and passes ``attn``.
    needs_attention: ClassVar[bool]

    def __call__(self, layer: DenseLayer, *, layer_idx: int, attn: torch.Tensor | None) -> ChunkLayer:
        """Compress one layer.

        ``layer``: keys/values (kv_heads, n, head_dim), positions (kv_heads, n).
        ``attn``: passage-to-passage attention weights of this layer, (num_attention_heads, n, n),
        or None when no press of the chain needs attention.
        """
        ...


def build_presses(specs: Any) -> KVPress | None:
    """The one press that ``specs`` describe, or None for no compression.

    ``specs``: a press object or spec (dict, name, JSON string), or a sequence of them applied
    first to last. Every form of the same chain builds the same press, so the same chunk key
    (:func:`press_fingerprint` calls this): a one-item list is its press,
    several are one :class:`~ragcompress.kv.presses.compose.ComposedPress` (which restricts an
    attention press's input to the tokens earlier presses kept), and nested compositions are
    flattened (the same presses in the same order do the same thing).
    """
    from ragcompress.kv.presses.compose import ComposedPress
    from ragcompress.registry import build, lookup

    if specs is None:
        return None
    many = isinstance(specs, Sequence) and not isinstance(specs, str | bytes)
    parts = []
    for i, spec in enumerate(specs if many else [specs]):
        press = build(spec)
        kind = lookup(press.registered_name)[0]
        if kind != "press":
            raise TypeError(
                f"presses item #{i} ({press.registered_name!r}) is a {kind} compressor, not a KV press"
            )
        parts.append(press)
    flat = [leaf for p in parts for leaf in _leaves(p)]
    if len(flat) <= 1:
        return flat[0] if flat else None
    if len(parts) == 1 and not any(isinstance(p, ComposedPress) for p in parts[0].presses):
        return cast("KVPress", parts[0])  # already one flat composition
    return cast("KVPress", ComposedPress(flat))


def _leaves(press: Any) -> list[Any]:
    """The presses a (possibly nested) composition applies, in order; ``[press]`` otherwise."""
    from ragcompress.kv.presses.compose import ComposedPress

    if isinstance(press, ComposedPress):
        return [leaf for p in press.presses for leaf in _leaves(p)]
    return [press]


def press_fingerprint(presses: Any) -> str:
    """Canonical JSON ``[spec]`` of the one press that ``presses`` (a press, a spec or a list of
    them) build into (:func:`build_presses`); ``"[]"`` without presses.
    Every form of the same chain (a list, a ``ComposedPress``, nested or not) gives one value."""
    from ragcompress.registry import spec_of

    press = build_presses(presses)
    specs = [] if press is None else [spec_of(press)]
    return json.dumps(specs, sort_keys=True, separators=(",", ":"))
