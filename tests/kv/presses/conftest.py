"""Press fixtures: random layers (as the encoder hands them to presses) and a basis file."""

from __future__ import annotations

import pytest
import torch

# 3 layers, 2 KV heads of dim 16, 4 query heads; 37 tokens (not a multiple of any group size)
LAYERS, KV_HEADS, GROUP, N, HEAD_DIM, OFFSET = 3, 2, 2, 37, 16, 11
INV_FREQ = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))


def random_layers(seed: int = 0, dtype: torch.dtype = torch.float32, n: int = N):
    """[(DenseLayer, attn)] per layer: keys with a few outlier channels (as real keys have),
    positions OFFSET.., causal softmax attention (KV_HEADS * GROUP, n, n)."""
    from ragcompress.kv.chunk import DenseLayer

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(LAYERS):
        keys = torch.randn(KV_HEADS, n, HEAD_DIM, generator=g)
        keys[..., :2] *= 6.0
        values = torch.randn(KV_HEADS, n, HEAD_DIM, generator=g)
        pos = torch.arange(OFFSET, OFFSET + n)[None].expand(KV_HEADS, n).clone()
        logits = torch.randn(KV_HEADS * GROUP, n, n, generator=g)
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        out.append((DenseLayer(keys.to(dtype), values.to(dtype), pos), logits.softmax(-1).to(dtype)))
    return out


@pytest.fixture(scope="session")
def basis_file(tmp_path_factory) -> str:
    """A full-rank (HEAD_DIM) pre-RoPE key+value basis fitted on other random layers."""
    from ragcompress.kv.encode.calibrate import fit_basis

    samples = [[layer.dense() for layer, _ in random_layers(seed=100 + i)] for i in range(4)]
    basis = fit_basis(samples, HEAD_DIM, values=True, inv_freq=INV_FREQ)
    path = tmp_path_factory.mktemp("basis") / "basis.safetensors"
    basis.save(path)
    return str(path)
