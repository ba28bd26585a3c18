"""The shared prefix's KV: what every chunk is encoded after and every assembled cache starts with.

Its own module, below both the encoder (which computes it) and the assembly (which places chunks
after it), so that neither has to import the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["PrefixKV"]


@dataclass(frozen=True, eq=False)
class PrefixKV:
    """KV of the shared prefix: per layer keys/values (kv_heads, prefix_len, head_dim)."""

    ids: tuple[int, ...]
    keys: Sequence[torch.Tensor]
    values: Sequence[torch.Tensor]
    model: str  # model fingerprint
    layout: str  # layout fingerprint

    @property
    def length(self) -> int:
        return len(self.ids)
