"""The KV press protocol: a query-agnostic compressor of one layer of one chunk.

A press is a registered dataclass (``@register(name, kind="press")``) whose fields are its
configuration; its spec goes into the chunk key. The encoder calls it once per layer with
the dense layer; it returns any :class:`~ragcompress.kv.chunk.ChunkLayer` (dense with fewer
tokens, quantized, low-rank, …). Every layer and head must keep the same number of tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import ChunkLayer, DenseLayer

__all__ = ["KVPress", "apply_presses"]


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


def apply_presses(
    layer: DenseLayer,
    presses: tuple[KVPress, ...] | list[KVPress],
    *,
    layer_idx: int,
    attn: torch.Tensor | None,
) -> ChunkLayer:
    """Run presses in order; a press after one that returned a compressed layer sees it densified."""
    from ragcompress.kv.chunk import DenseLayer

    out: ChunkLayer = layer
    for press in presses:
        dense = out if isinstance(out, DenseLayer) else DenseLayer(*out.dense())
        out = press(dense, layer_idx=layer_idx, attn=attn)
    return out
