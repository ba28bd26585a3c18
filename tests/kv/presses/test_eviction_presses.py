"""What each eviction press keeps, checked against a direct computation of its rule."""

from __future__ import annotations

import pytest
import torch

import ragcompress
from ragcompress.kv.chunk import DenseLayer
from ragcompress.kv.presses import kept_count

from .conftest import OFFSET, random_layers


def kept_index(out) -> torch.Tensor:
    return out.dense()[2] - OFFSET  # (kv_heads, k) original indices


@pytest.mark.parametrize("n, ratio, keep", [(10, 0.3, 7), (37, 0.5, 19), (1, 0.9, 1), (100, 0.875, 13)])
def test_kept_count(n, ratio, keep):
    assert kept_count(n, ratio) == keep


def test_knorm_keeps_the_smallest_key_norms_per_head():
    layer, _ = random_layers()[0]
    out = ragcompress.build({"name": "knorm", "ratio": 0.5})(layer, layer_idx=0, attn=None)
    idx = kept_index(out)
    norms = layer.keys.norm(dim=-1)
    for h in range(idx.shape[0]):
        want = torch.sort(torch.argsort(norms[h])[: idx.shape[1]]).values
        assert torch.equal(idx[h], want)
    assert not torch.equal(idx[0], idx[1])  # heads choose independently


def test_window_keeps_sinks_and_the_most_recent():
    layer, _ = random_layers()[0]
    n = layer.num_tokens
    out = ragcompress.build({"name": "window", "ratio": 0.6, "sinks": 3})(layer, layer_idx=0, attn=None)
    k = kept_count(n, 0.6)
    want = torch.cat((torch.arange(3), torch.arange(n - (k - 3), n)))
    assert all(torch.equal(row, want) for row in kept_index(out))


def test_observed_keeps_the_most_attended_tokens_of_each_kv_group():
    layer, attn = random_layers()[0]
    out = ragcompress.build({"name": "observed", "ratio": 0.5})(layer, layer_idx=0, attn=attn)
    received = attn.sum(dim=1).reshape(2, 2, -1).mean(dim=1)  # (kv_heads, n)
    idx = kept_index(out)
    for h in range(2):
        want = torch.sort(torch.argsort(received[h], descending=True, stable=True)[: idx.shape[1]]).values
        assert torch.equal(idx[h], want)


def test_snapkv_window_uses_only_the_last_rows_and_keeps_them():
    layer, attn = random_layers()[0]
    n = layer.num_tokens
    # Attention of every row but the last 4 points at token 0 only: with window=4 it must not count.
    attn = attn.clone()
    attn[:, : n - 4] = 0
    attn[:, : n - 4, 0] = 1
    out = ragcompress.build({"name": "observed", "ratio": 0.5, "window": 4})(layer, layer_idx=0, attn=attn)
    idx = kept_index(out)
    received = attn[:, -4:].sum(dim=1).reshape(2, 2, -1).mean(dim=1)
    for h in range(2):
        assert set(range(n - 4, n)) <= set(idx[h].tolist())
        rest = torch.argsort(received[h, : n - 4], descending=True, stable=True)[: idx.shape[1] - 4]
        assert set(idx[h].tolist()) == set(rest.tolist()) | set(range(n - 4, n))


def test_observed_after_knorm_scores_on_the_kept_tokens():
    """In a composition, attention is restricted to the tokens the earlier press kept."""
    layer, attn = random_layers()[0]
    comp = ragcompress.build([{"name": "knorm", "ratio": 0.5}, {"name": "observed", "ratio": 0.5}])
    assert comp.needs_attention
    out = comp(layer, layer_idx=0, attn=attn)
    first = ragcompress.build({"name": "knorm", "ratio": 0.5})(layer, layer_idx=0, attn=None)
    i1 = kept_index(first)
    for h in range(2):
        sub = attn.reshape(2, 2, *attn.shape[1:])[h][:, i1[h]][:, :, i1[h]]  # (group, k, k)
        received = sub.sum(dim=1).mean(dim=0)
        k2 = out.num_tokens
        want = torch.sort(i1[h][torch.argsort(received, descending=True, stable=True)[:k2]]).values
        assert torch.equal(kept_index(out)[h], want)


def test_observed_without_attention_is_an_error():
    layer, _ = random_layers()[0]
    with pytest.raises(ValueError, match="attention"):
        ragcompress.build({"name": "observed", "ratio": 0.5})(layer, layer_idx=0, attn=None)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "knorm", "ratio": 1.0}, "ratio"),
        ({"name": "knorm", "ratio": -0.1}, "ratio"),
        ({"name": "knorm", "ratio": "half"}, "ratio"),
        ({"name": "window", "ratio": 0.5, "sinks": -1}, "sinks"),
        ({"name": "observed", "ratio": 0.5, "kernel_size": 4}, "kernel_size"),
        ({"name": "observed", "ratio": 0.5, "window": -2}, "window"),
        ({"name": "quantize", "bits": 3}, "bits"),
        ({"name": "quantize", "bits": 4, "group_size": 0}, "group_size"),
        ({"name": "lowrank", "basis": "/nonexistent/basis.safetensors"}, "basis"),
        ({"name": "compose", "presses": []}, "non-empty"),
        ({"name": "knorm", "ratoi": 0.5}, "ratoi"),
    ],
)
def test_bad_parameters_are_named(spec, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ragcompress.build(spec)


def test_a_text_compressor_cannot_be_composed_as_a_press():
    if "sentences" not in ragcompress.available("text"):
        pytest.skip("no text compressor registered")
    with pytest.raises((TypeError, ValueError)):
        ragcompress.build({"name": "compose", "presses": [{"name": "sentences"}]})


def test_empty_heads_layer_shapes_survive_every_dtype():
    keys = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    layer = DenseLayer(keys, keys.clone(), torch.arange(5)[None].expand(2, -1))
    out = ragcompress.build({"name": "knorm", "ratio": 0.4})(layer, layer_idx=0, attn=None)
    assert out.dense()[0].dtype == torch.bfloat16 and out.num_tokens == 3


def test_chains_restrict_attention_to_the_tokens_an_earlier_press_kept() -> None:
    from ragcompress.kv.presses.compose import _kept_attention, _kept_columns

    attn = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(0))  # 4 query heads, 2 KV heads
    original = torch.arange(10, 16)[None].expand(2, 6)
    kept = torch.tensor([[10, 12, 15], [11, 12, 13]])
    square, cols = _kept_attention(attn, original, kept), _kept_columns(attn[:, :2], original, kept)
    for head in range(4):
        idx = kept[head // 2] - 10
        assert torch.equal(square[head], attn[head][idx][:, idx])
        assert torch.equal(cols[head], attn[head, :2][:, idx])
