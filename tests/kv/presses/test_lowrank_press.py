"""Low-rank press: the basis file is part of the key, pre-RoPE fitting, refusal of changed files."""

from __future__ import annotations

import shutil

import pytest
import torch

import ragcompress
from ragcompress.kv.chunk import DenseLayer, layer_class
from ragcompress.kv.encode.calibrate import fit_basis
from ragcompress.kv.kernels import rerotate
from ragcompress.kv.layers.lowrank_basis import LowRankBasis
from ragcompress.registry import spec_of

from .conftest import HEAD_DIM, INV_FREQ, KV_HEADS, random_layers


def low_rank_rotated_layers(rank: int, seed: int, n: int = 40):
    """Layers whose keys are rank-``rank`` before RoPE, then rotated at their positions."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(KV_HEADS, rank, HEAD_DIM, generator=torch.Generator().manual_seed(0))
    layers = []
    for _ in range(2):
        pre = torch.randn(KV_HEADS, n, rank, generator=g) @ mix
        pos = torch.arange(5, 5 + n)[None].expand(KV_HEADS, n).clone()
        keys = rerotate(pre, pos, INV_FREQ)
        layers.append(DenseLayer(keys, torch.randn(KV_HEADS, n, HEAD_DIM, generator=g), pos))
    return layers


def test_pre_rope_basis_recovers_low_rank_keys_that_a_post_rope_basis_cannot(tmp_path):
    train = [[layer.dense() for layer in low_rank_rotated_layers(4, seed=s)] for s in range(3)]
    test = low_rank_rotated_layers(4, seed=99)
    errs = {}
    for name, freq in (("pre", INV_FREQ), ("post", None)):
        path = tmp_path / f"{name}.safetensors"
        fit_basis(train, 4, inv_freq=freq).save(path)
        press = ragcompress.build({"name": "lowrank", "basis": str(path)})
        errs[name] = max(
            float((press(layer, layer_idx=i, attn=None).dense()[0] - layer.keys).abs().max())
            for i, layer in enumerate(test)
        )
    assert errs["pre"] < 1e-4
    assert errs["post"] > 100 * errs["pre"]


def test_lower_rank_costs_fewer_bytes_and_more_error(basis_file):
    layer, _ = random_layers()[0]
    out = {}
    for r in (4, 8, HEAD_DIM):
        press = ragcompress.build({"name": "lowrank", "basis": basis_file, "rank": r})
        out[r] = press(layer, layer_idx=0, attn=None)
    errs = {r: float((o.dense()[0] - layer.keys).norm()) for r, o in out.items()}
    assert out[4].nbytes < out[8].nbytes < out[HEAD_DIM].nbytes
    assert errs[4] > errs[8] > errs[HEAD_DIM]


def test_spec_carries_the_file_digest_and_a_new_basis_changes_it(basis_file, tmp_path):
    a = spec_of(ragcompress.build({"name": "lowrank", "basis": basis_file}))
    assert len(a["digest"]) == 64
    other = tmp_path / "other.safetensors"
    samples = [[layer.dense() for layer, _ in random_layers(seed=7)]]
    fit_basis(samples, HEAD_DIM).save(other)
    b = spec_of(ragcompress.build({"name": "lowrank", "basis": str(other)}))
    assert a["digest"] != b["digest"]


def test_changed_basis_file_is_refused_for_building_and_decoding(basis_file, tmp_path):
    path = tmp_path / "b.safetensors"
    shutil.copy(basis_file, path)
    press = ragcompress.build({"name": "lowrank", "basis": str(path), "rank": 4})
    layer, _ = random_layers()[0]
    out = press(layer, layer_idx=0, attn=None)
    spec = spec_of(press)
    samples = [[lay.dense() for lay, _ in random_layers(seed=3)]]
    fit_basis(samples, HEAD_DIM).save(path)  # overwrite with another basis
    with pytest.raises(ValueError, match="changed"):
        ragcompress.build(spec)
    stored = layer_class(out.layer_name).from_tensors(out.tensors(), out.meta())
    with pytest.raises(ValueError, match="changed"):
        stored.dense()


def test_value_projection_needs_a_value_basis(tmp_path):
    path = tmp_path / "keys_only.safetensors"
    fit_basis([[layer.dense() for layer, _ in random_layers()]], 4).save(path)
    with pytest.raises(ValueError, match="value basis"):
        ragcompress.build({"name": "lowrank", "basis": str(path), "values": True})


def test_basis_file_round_trips(tmp_path):
    b = fit_basis([[layer.dense() for layer, _ in random_layers()]], 6, values=True, inv_freq=INV_FREQ)
    b.save(tmp_path / "x.safetensors")
    c = LowRankBasis.load(tmp_path / "x.safetensors")
    for name in ("key_basis", "key_mean", "value_basis", "value_mean", "inv_freq"):
        assert torch.equal(getattr(b, name), getattr(c, name))
    # orthonormal columns
    eye = c.key_basis[0, 0].T @ c.key_basis[0, 0]
    torch.testing.assert_close(eye, torch.eye(6), atol=1e-5, rtol=0)
