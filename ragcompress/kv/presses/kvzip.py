"""KVzip (Kim et al., 2025): evict the tokens the model does not need to reconstruct the passage.

Query-agnostic by construction. After the passage is encoded, the encoder feeds the model
``prompt`` and then the passage again (teacher forced) on top of the passage's KV; a token's
score is the largest attention weight any of those reconstruction queries pays it (max over
queries and over the query heads of its KV group). A token the model never looks at while
repeating the passage is one that a later question is unlikely to need either — unlike
observed attention (:mod:`~ragcompress.kv.presses.observed`), which only sees what the
passage's own tokens looked back at while it was being read. Costs one extra forward pass over
``len(prompt) + n`` tokens per passage, once: the chunk is cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ragcompress.kv.presses.base import EvictionPress
from ragcompress.registry import register

if TYPE_CHECKING:
    import torch

__all__ = ["KVzipPress"]


@register("kvzip", kind="press")
@dataclass
class KVzipPress(EvictionPress):
    """Keep, per KV head, the tokens most attended while the model repeats the passage.

    ``prompt``: the instruction placed between the passage and its repetition (its text is
    part of the chunk key).
    """

    prompt: str = "\n\nRepeat the previous context exactly.\n"
    needs_attention: ClassVar[bool] = False
    # The encoder runs the reconstruction pass and passes its attention as ``attn``.
    needs_reconstruction: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"KVzipPress.prompt must be a non-empty string, got {self.prompt!r}")

    def score(
        self, keys: torch.Tensor, values: torch.Tensor, *, layer_idx: int, attn: torch.Tensor | None
    ) -> torch.Tensor:
        """``attn``: (num_attention_heads, r, n) weights of r reconstruction queries (or their
        per-head maximum, r = 1) over the passage's n tokens."""
        h, n, _ = keys.shape
        if attn is None:
            raise ValueError("kvzip needs the reconstruction attention (the chunk encoder passes it)")
        if attn.dim() != 3 or attn.shape[2] != n or attn.shape[0] % h:
            raise ValueError(
                f"attn must be (num_attention_heads, r, {n}) with a multiple of {h} heads, "
                f"got {tuple(attn.shape)}"
            )
        s = attn.float().amax(dim=1)  # (num_attention_heads, n)
        return s.reshape(h, -1, n).amax(dim=1)  # a token matters if any head of its group needs it
