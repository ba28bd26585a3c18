"""The torch RoPE reference: the one place in torch where keys (or queries) are rotated.

RoPE rotates the channel pair ``(j, j + rot_dim // 2)`` of a vector at position ``p`` by the
angle ``p * inv_freq[j]`` (transformers' ``rotate_half`` pairing); channels past ``rot_dim``
(partial rotary) pass through. Rotations compose, so a key rotated at ``p`` moves to
``p + delta`` by a rotation of ``delta * inv_freq``. ``inv_freq`` comes from the model's
:class:`~ragcompress.models.arch.ModelArch` (default, linear or llama3-scaled: the scaling only
changes the table), so moving a key is exact up to fp32 rounding. Every Triton kernel that
rotates (``kv/kernels``, ``kv/fast``) is tested against :func:`rotate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ragcompress.models.arch import ModelArch, RopeSpec

__all__ = ["Rotary", "cos_sin", "rerotate", "rotate", "rotate_by", "rotate_half"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the last dimension's halves."""
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def cos_sin(delta: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos``/``sin`` of angles ``delta * inv_freq``: shape (*delta.shape, rot_dim), each
    half repeated (the layout transformers' rotary modules return). ``delta``: integer positions
    or position differences, any shape; ``inv_freq``: (rot_dim // 2,)."""
    import torch

    angle = delta.to(torch.float32)[..., None] * inv_freq.to(device=delta.device, dtype=torch.float32)
    emb = torch.cat((angle, angle), dim=-1)
    return emb.cos(), emb.sin()


def rotate_by(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``keys`` (..., n, head_dim) by precomputed fp32 ``cos``/``sin`` (broadcastable to
    (..., n, rot_dim)); channels past ``rot_dim`` pass through. Computed in fp32, returned in
    ``keys``' dtype."""
    import torch

    r = cos.shape[-1]
    k = keys.float()
    rot = k[..., :r] * cos + rotate_half(k[..., :r]) * sin
    out = rot if r == k.shape[-1] else torch.cat((rot, k[..., r:]), dim=-1)
    return out.to(keys.dtype)


def rotate(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``keys`` (..., n, head_dim) rotated by ``delta`` (int, broadcastable to ``keys.shape[:-1]``)
    with the table ``inv_freq`` (rot_dim // 2,): the reference every rotating kernel matches.
    A negative ``delta`` un-rotates (e.g. back to the pre-RoPE frame)."""
    return rotate_by(keys, *cos_sin(delta.to(keys.device), inv_freq))


@dataclass(frozen=True, eq=False)
class Rotary:
    """One RoPE frequency table, with memoized cos/sin for the deltas assembly asks for.

    ``inv_freq`` (rot_dim // 2,) fp32, from :meth:`RopeSpec.inv_freq` (equal to the model's own
    table, rounded as the model rounds it).
    """

    inv_freq: torch.Tensor
    # cos/sin per (delta, device): assembly asks for the same few deltas at every layer.
    _memo: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def rot_dim(self) -> int:
        return 2 * int(self.inv_freq.shape[-1])

    @classmethod
    def of(cls, spec: RopeSpec) -> Rotary:
        """The table of ``spec`` (one shared instance per spec, so its cos/sin memo is reused)."""
        hit = _BY_SPEC.get(spec)
        if hit is None:
            hit = _BY_SPEC.setdefault(spec, cls(inv_freq=spec.inv_freq()))
        return hit

    @classmethod
    def from_arch(cls, arch: ModelArch, layer_idx: int | None = None) -> Rotary:
        """Layer ``layer_idx``'s table; None: the one table all layers share (raises for a family
        with per-layer-type tables)."""
        spec = arch.uniform_rope("one Rotary") if layer_idx is None else arch.rope_for(layer_idx)
        return cls.of(spec)

    @classmethod
    def from_model(cls, model: Any) -> Rotary:
        """The table of ``model``'s family adapter (:func:`~ragcompress.models.arch.arch_for`);
        raises for an unsupported family or RoPE type."""
        from ragcompress.models.arch import arch_for

        spec = arch_for(model).uniform_rope("one Rotary")
        return cls.of(spec)

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
        return cos_sin(delta, self.inv_freq)


_BY_SPEC: dict[Any, Rotary] = {}


def rerotate(keys: torch.Tensor, delta_positions: torch.Tensor | int, rotary: Rotary) -> torch.Tensor:
    """Move keys rotated at positions ``p`` to ``p + delta``.

    ``keys``: (..., n, head_dim), any float dtype (computed in fp32, returned in keys' dtype).
    ``delta_positions``: an int, or an int64 tensor broadcastable to ``keys.shape[:-1]``.
    """
    if isinstance(delta_positions, int):
        if delta_positions == 0:
            return keys
        cos, sin = rotary.cos_sin_of(delta_positions, keys.device)
        return rotate_by(keys, cos, sin)
    return rotate(keys, delta_positions, rotary.inv_freq)
