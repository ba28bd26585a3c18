"""Fitting low-rank bases (:class:`~ragcompress.kv.layers.lowrank_basis.LowRankBasis`): SVD of
sample chunks' keys (pre-RoPE by default) and values, per layer and KV head; ``calibrate``
encodes sample passages with a model to get them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ragcompress.kv.layers.lowrank_basis import LowRankBasis

if TYPE_CHECKING:
    import torch

__all__ = ["calibrate", "fit_basis"]


def _principal(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and top-``rank`` principal directions (D, rank) of rows ``x`` (N, D)."""
    import torch

    x = x.double()
    mean = x.mean(dim=0)
    xc = x - mean
    evals, evecs = torch.linalg.eigh(xc.T @ xc)
    order = torch.argsort(evals, descending=True)[:rank]
    return mean.float(), evecs[:, order].float()


def fit_basis(
    samples: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]],
    rank: int,
    *,
    values: bool = False,
    inv_freq: torch.Tensor | None = None,
) -> LowRankBasis:
    """Fit a basis from ``samples[passage][layer] = (keys, values, positions)`` as
    ``ChunkLayer.dense()`` returns them; with ``inv_freq`` keys are fitted pre-RoPE."""
    import torch

    from ragcompress.models.rope import rotate

    if not samples:
        raise ValueError("fitting a low-rank basis needs sample passages")
    h, _, d = samples[0][0][0].shape
    if not 0 < rank <= d:
        raise ValueError(f"rank must be in [1, head_dim={d}], got {rank}")
    freq = None if inv_freq is None else inv_freq.float().cpu()
    kb, km, vb, vm = [], [], [], []
    for li in range(len(samples[0])):
        ks, vs = [], []
        for layers in samples:
            k, v, pos = layers[li]
            k = k.float().cpu()
            if freq is not None:
                k = rotate(k, -pos.cpu(), freq)
            ks.append(k)
            vs.append(v.float().cpu())
        kcat, vcat = torch.cat(ks, dim=1), torch.cat(vs, dim=1)  # (h, N, d)
        fits = [_principal(kcat[j], rank) for j in range(h)]
        km.append(torch.stack([m for m, _ in fits]))
        kb.append(torch.stack([b for _, b in fits]))
        if values:
            fits = [_principal(vcat[j], rank) for j in range(h)]
            vm.append(torch.stack([m for m, _ in fits]))
            vb.append(torch.stack([b for _, b in fits]))
    return LowRankBasis(
        torch.stack(kb),
        torch.stack(km),
        torch.stack(vb) if values else None,
        torch.stack(vm) if values else None,
        freq,
    )


def calibrate(
    model: Any,
    tokenizer: Any,
    passages: Sequence[str],
    rank: int,
    *,
    values: bool = False,
    pre_rope: bool = True,
) -> LowRankBasis:
    """Encode ``passages`` with the KV path's encoder (no press) and fit a rank-``rank`` basis
    per layer and KV head; ``pre_rope`` un-rotates keys first (see the module docstring)."""
    from ragcompress.kv.encode.encoder import ChunkEncoder

    if not passages:
        raise ValueError("calibrate needs sample passages")
    encoder = ChunkEncoder(model, tokenizer)
    inv_freq = None
    if pre_rope:
        # one table in the file: a family with per-layer-type RoPE cannot be calibrated pre-RoPE yet
        spec = encoder.arch.uniform_rope("pre-RoPE low-rank calibration")
        if spec.rot_dim != encoder.arch.head_dim:
            raise ValueError("pre-RoPE calibration needs full rotary (rot_dim == head_dim)")
        inv_freq = spec.inv_freq().clone()  # the basis owns its copy of the shared table
    chunks = encoder.encode(list(passages))
    samples = [[layer.dense() for layer in c.layers] for c in chunks]
    return fit_basis(samples, rank, values=values, inv_freq=inv_freq)
