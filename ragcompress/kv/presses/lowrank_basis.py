"""Per-layer, per-KV-head low-rank bases of keys (and values), calibrated offline by SVD on
sample passages (the CSKV / Palu observation that KV channels are strongly correlated).

Keys are calibrated in the **pre-RoPE** frame by default: stored keys are un-rotated by their
positions first. RoPE spins each channel pair at its own frequency, so post-RoPE keys of one
head spread over more dimensions than the pre-RoPE ones the projection actually produced; a
pre-RoPE basis captures more at the same rank (``ragcompress bench kv`` reports the K and KV rows),
at the price of one rotation per key after reconstruction (the layer rebuilds pre-RoPE keys
and rotates them by their kept positions, exactly as the model did).

A basis is saved once per model as a safetensors file; presses reference it by path and by the
SHA-256 of its bytes, which goes into chunk keys.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["LowRankBasis", "calibrate", "file_digest", "fit_basis"]


@dataclass(frozen=True, eq=False)
class LowRankBasis:
    """``key_basis`` (layers, kv_heads, head_dim, rank) orthonormal columns, best first;
    ``key_mean`` (layers, kv_heads, head_dim); the same for values (or None); ``inv_freq``
    (head_dim // 2,) when keys are in the pre-RoPE frame, else None."""

    key_basis: torch.Tensor
    key_mean: torch.Tensor
    value_basis: torch.Tensor | None = None
    value_mean: torch.Tensor | None = None
    inv_freq: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.key_basis.shape[-1])

    @property
    def layers(self) -> int:
        return int(self.key_basis.shape[0])

    def save(self, path: str | Path) -> str:
        """Write the basis; returns the file's SHA-256."""
        from safetensors.torch import save_file

        tensors = {"key_basis": self.key_basis, "key_mean": self.key_mean}
        for name in ("value_basis", "value_mean", "inv_freq"):
            t = getattr(self, name)
            if t is not None:
                tensors[name] = t
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(
            {k: v.contiguous().float().cpu() for k, v in tensors.items()}, str(tmp), {"format": "lowrank/1"}
        )
        tmp.replace(path)
        return file_digest(path)

    @classmethod
    def load(cls, path: str | Path) -> LowRankBasis:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"low-rank basis {str(path)!r} does not exist; calibrate one first")
        t = load_file(str(path))
        if "key_basis" not in t or "key_mean" not in t:
            raise ValueError(f"{str(path)!r} is not a low-rank basis file (no key_basis/key_mean)")
        return cls(
            t["key_basis"], t["key_mean"], t.get("value_basis"), t.get("value_mean"), t.get("inv_freq")
        )


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_verified(path: str, digest: str) -> LowRankBasis:
    """The basis at ``path``, checked against ``digest``; re-read whenever the file changes."""
    p = Path(path)
    st = p.stat() if p.is_file() else None
    return _load_verified(path, digest, st.st_mtime_ns if st else 0, st.st_size if st else -1)


@functools.lru_cache(maxsize=8)
def _load_verified(path: str, digest: str, mtime_ns: int, size: int) -> LowRankBasis:
    # mtime and size are part of the cache key so that a rewritten file is hashed again.
    got = file_digest(path) if size >= 0 else "missing"
    if got != digest:
        raise ValueError(
            f"low-rank basis {path!r} has changed or is missing "
            f"(sha256 {got[:12]}…, expected {digest[:12]}…); "
            "chunks compressed with it can no longer be decoded"
        )
    return LowRankBasis.load(path)


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
