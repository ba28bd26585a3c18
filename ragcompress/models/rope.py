"""RoPE re-rotation of cached keys.

RoPE rotates each pair of key dimensions by an angle ``position * inv_freq``; rotations
compose, so a key rotated at position ``p`` is moved to ``p + d`` by rotating it by ``d``.
We take ``cos``/``sin`` for ``d`` from the model's own rotary module, so default, linear and
llama3 scalings (which only change ``inv_freq``) are exact; dynamic NTK scaling depends on the
sequence length and is not. ``rerotate`` is the seam where a fused GPU kernel plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = ["Rotary", "rerotate"]


@dataclass(frozen=True, eq=False)
class Rotary:
    """The model's rotary embedding module and what re-rotation needs from it.

    Assumes the half-split pairing of Llama-family models (``rotate_half``); ``rot_dim`` is
    the number of rotated dimensions (< head_dim for partial rotary).
    """

    module: Any
    attention_scaling: float
    rot_dim: int
    # cos/sin per (delta, device): assembly asks for the same few deltas at every layer.
    _memo: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> Rotary:
        import torch

        base = getattr(model, "model", model)
        module = getattr(base, "rotary_emb", None)
        if module is None or not hasattr(module, "inv_freq"):
            raise ValueError(
                f"{type(model).__name__} has no single rotary embedding module (model.model.rotary_emb); "
                "KV chunk re-positioning supports RoPE models with one rotary embedding"
            )
        rope_type = getattr(module, "rope_type", "default")
        if "dynamic" in str(rope_type):
            raise ValueError(
                f"rope type {rope_type!r} depends on the sequence length; re-rotation would be inexact"
            )
        dummy = torch.zeros(1, device=module.inv_freq.device, dtype=torch.float32)
        cos, _ = module(dummy, torch.zeros(1, 1, dtype=torch.long, device=dummy.device))
        return cls(
            module=module, attention_scaling=float(module.attention_scaling), rot_dim=int(cos.shape[-1])
        )

    def cos_sin_of(self, delta: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Memoized fp32 ``cos``/``sin`` (rot_dim,) of one integer delta."""
        import torch

        key = (delta, str(device))
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) > 4096:
                self._memo.clear()
            cos, sin = self.cos_sin(torch.tensor([delta], device=device))
            hit = self._memo[key] = (cos[0], sin[0])
        return hit

    def cos_sin(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``cos``/``sin`` of ``delta`` (any shape, int64): shape (*delta.shape, rot_dim)."""
        import torch

        dev = delta.device
        dummy = torch.zeros(1, device=dev, dtype=torch.float32)
        cos, sin = self.module(dummy, delta.reshape(1, -1).to(torch.long))
        # The module folds attention scaling into cos/sin; keys already carry it once.
        scale = self.attention_scaling
        shape = (*delta.shape, self.rot_dim)
        return (cos / scale).reshape(shape), (sin / scale).reshape(shape)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rerotate(keys: torch.Tensor, delta_positions: torch.Tensor | int, rotary: Rotary) -> torch.Tensor:
    """Move keys rotated at positions ``p`` to ``p + delta``.

    ``keys``: (..., n, head_dim), any float dtype (computed in fp32, returned in keys' dtype).
    ``delta_positions``: an int, or an int64 tensor broadcastable to ``keys.shape[:-1]``.
    """

    if isinstance(delta_positions, int):
        if delta_positions == 0:
            return keys
        cos, sin = rotary.cos_sin_of(delta_positions, keys.device)
    else:
        cos, sin = rotary.cos_sin(delta_positions.to(keys.device))
    return rotate_by(keys, cos, sin)


def rotate_by(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``keys`` (..., n, head_dim) by precomputed fp32 ``cos``/``sin`` (n or broadcastable,
    rot_dim); channels past ``rot_dim`` (partial rotary) pass through. Computed in fp32."""
    import torch

    r = cos.shape[-1]
    k = keys.float()
    rot = k[..., :r] * cos + _rotate_half(k[..., :r]) * sin
    out = rot if r == k.shape[-1] else torch.cat((rot, k[..., r:]), dim=-1)
    return out.to(keys.dtype)
