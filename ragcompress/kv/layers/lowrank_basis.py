"""Per-layer, per-KV-head low-rank bases of keys (and values), calibrated offline by SVD on
sample passages (the CSKV / Palu observation that KV channels are strongly correlated).

Keys are calibrated in the **pre-RoPE** frame by default: stored keys are un-rotated by their
positions first. RoPE spins each channel pair at its own frequency, so post-RoPE keys of one
head spread over more dimensions than the pre-RoPE ones the projection actually produced; a
pre-RoPE basis captures more at the same rank (``ragcompress bench kv`` reports the K and KV rows),
at the price of one rotation per key after reconstruction (the layer rebuilds pre-RoPE keys
and rotates them by their kept positions, exactly as the model did).

A basis is saved once per model as a safetensors file; presses reference it by path and by the
SHA-256 of its bytes, which goes into chunk keys. Fitting one
(:mod:`ragcompress.kv.encode.calibrate`) encodes passages, so it lives with the encoder.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["LowRankBasis", "file_digest", "load_verified"]


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
