"""The contract every registered press passes, on random layers shaped like the encoder's.

Each case names a spec, how many tokens it keeps, the exact bytes it must store (fp16 layers)
and how close its dense() must stay to the input ("exact", "quant", "close" or None).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load

import ragcompress
from ragcompress.kv import serialize
from ragcompress.kv.chunk import DenseLayer, KVChunk, layer_class
from ragcompress.kv.key import ChunkKey, tokens_digest
from ragcompress.kv.presses import kept_count
from ragcompress.registry import spec_of

from .conftest import HEAD_DIM, KV_HEADS, OFFSET, N, random_layers


def _dense_bytes(k: int) -> int:  # fp16 keys + values, int64 positions
    return KV_HEADS * k * (2 * HEAD_DIM * 2 + 8)


def _quant_bytes(k: int, bits: int, group: int) -> int:
    codes = 2 * KV_HEADS * k * HEAD_DIM * bits // 8
    scales = 2 * 2 * KV_HEADS * (math.ceil(k / group) * HEAD_DIM + k * math.ceil(HEAD_DIM / group))
    return codes + scales + KV_HEADS * k * 4  # int32 positions


def _lowrank_bytes(k: int, rank: int, values: bool) -> int:
    return KV_HEADS * k * (rank * 2 + (rank if values else HEAD_DIM) * 2 + 4)


# (id, spec, evicted ratio, bytes(kept), fidelity)
CASES = [
    ("knorm-0", {"name": "knorm", "ratio": 0.0}, 0.0, _dense_bytes, "exact"),
    ("knorm-0.5", {"name": "knorm", "ratio": 0.5}, 0.5, _dense_bytes, None),
    ("window-0", {"name": "window", "ratio": 0.0}, 0.0, _dense_bytes, "exact"),
    ("window-0.7", {"name": "window", "ratio": 0.7, "sinks": 2}, 0.7, _dense_bytes, None),
    ("observed-0", {"name": "observed", "ratio": 0.0}, 0.0, _dense_bytes, "exact"),
    ("kvzip-0", {"name": "kvzip", "ratio": 0.0}, 0.0, _dense_bytes, "exact"),
    ("kvzip-0.6", {"name": "kvzip", "ratio": 0.6}, 0.6, _dense_bytes, None),
    ("observed-0.5", {"name": "observed", "ratio": 0.5}, 0.5, _dense_bytes, None),
    (
        "snapkv-0.3",
        {"name": "observed", "ratio": 0.3, "window": 4, "kernel_size": 3},
        0.3,
        _dense_bytes,
        None,
    ),
    (
        "int8",
        {"name": "quantize", "bits": 8, "group_size": 32},
        0.0,
        lambda k: _quant_bytes(k, 8, 32),
        "quant",
    ),
    (
        "int4-g8",
        {"name": "quantize", "bits": 4, "group_size": 8},
        0.0,
        lambda k: _quant_bytes(k, 4, 8),
        "quant",
    ),
    (
        "lowrank-full",
        {"name": "lowrank", "basis": "BASIS"},
        0.0,
        lambda k: _lowrank_bytes(k, HEAD_DIM, False),
        "close",
    ),
    (
        "lowrank-4-kv",
        {"name": "lowrank", "basis": "BASIS", "rank": 4, "values": True},
        0.0,
        lambda k: _lowrank_bytes(k, 4, True),
        None,
    ),
    (
        "knorm+int4",
        [{"name": "knorm", "ratio": 0.5}, {"name": "quantize", "bits": 4}],
        0.5,
        lambda k: _quant_bytes(k, 4, 32),
        None,
    ),
    (
        "snapkv+int8",
        [
            {"name": "window", "ratio": 0.2},
            {"name": "observed", "ratio": 0.5, "window": 3},
            {"name": "quantize", "bits": 8},
        ],
        None,  # two evictions: 37 → 30 → 15
        lambda k: _quant_bytes(k, 8, 32),
        None,
    ),
]


def _build(spec, basis_file):
    text = json.dumps(spec).replace('"BASIS"', json.dumps(basis_file))
    return ragcompress.build(json.loads(text))


def _run(press, dtype=torch.float32, seed=0):
    return [
        (layer, press(layer, layer_idx=i, attn=attn))
        for i, (layer, attn) in enumerate(random_layers(seed, dtype))
    ]


def _kept(case) -> int:
    _, spec, ratio, _, _ = case
    if ratio is None:  # the composed evictions, applied in order
        n = N
        for s in spec:
            n = kept_count(n, s.get("ratio", 0.0))
        return n
    return kept_count(N, ratio)


def test_every_registered_press_has_cases():
    covered = set()
    for _, spec, *_ in CASES:
        covered |= {s["name"] for s in (spec if isinstance(spec, list) else [spec])}
    covered |= {"compose"}
    # Built-in presses only: test modules register throwaway presses of their own.
    builtin = {
        n
        for n in ragcompress.available("press")
        if ragcompress.registry.lookup(n)[1].__module__.startswith("ragcompress.")
    }
    assert builtin <= covered


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_shapes_counts_and_original_positions(case, basis_file):
    press = _build(case[1], basis_file)
    k = _kept(case)
    for layer, out in _run(press):
        keys, values, pos = out.dense()
        assert out.num_tokens == k
        assert keys.shape == values.shape == (KV_HEADS, k, HEAD_DIM)
        assert keys.dtype == values.dtype == torch.float32
        assert pos.dtype == torch.int64 and pos.shape == (KV_HEADS, k)
        # kept positions are original ones, strictly increasing, and the rows that go with them
        assert bool((pos[:, 1:] > pos[:, :-1]).all())
        assert bool(((pos >= OFFSET) & (pos < OFFSET + N)).all())
        if isinstance(out, DenseLayer):
            idx = (pos - OFFSET)[..., None].expand(-1, -1, HEAD_DIM)
            assert torch.equal(keys, torch.gather(layer.keys, 1, idx))
            assert torch.equal(values, torch.gather(layer.values, 1, idx))


@pytest.mark.parametrize("case", [c for c in CASES if c[4]], ids=[c[0] for c in CASES if c[4]])
def test_noop_settings_reproduce_the_layer(case, basis_file):
    press = _build(case[1], basis_file)
    for layer, out in _run(press):
        keys, values, pos = out.dense()
        assert torch.equal(pos, layer.positions)
        if case[4] == "exact":
            assert out is layer or (torch.equal(keys, layer.keys) and torch.equal(values, layer.values))
        elif case[4] == "close":
            torch.testing.assert_close(keys, layer.keys, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(values, layer.values, atol=1e-4, rtol=1e-4)
        else:  # quantization error: half a step of the widest group, plus fp16 rounding of the scales
            levels = 2 ** case[1]["bits"] - 1
            for x, y in ((layer.keys, keys), (layer.values, values)):
                step = (x.amax() - x.amin()) / levels
                assert float((x - y).abs().max()) <= 0.5 * float(step) + 1e-2 * float(x.abs().max()) / levels


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stored_bytes_shrink_as_specified(case, basis_file):
    press = _build(case[1], basis_file)
    k = _kept(case)
    for _, out in _run(press, dtype=torch.float16):
        assert out.nbytes == case[3](k)


def test_int4_costs_under_a_third_of_fp16_at_model_sizes():
    from ragcompress.kv.chunk import DenseLayer

    press = ragcompress.build({"name": "quantize", "bits": 4, "group_size": 32})
    keys = torch.randn(4, 256, 64, dtype=torch.float16)
    layer = DenseLayer(keys, keys.clone(), torch.arange(256)[None].expand(4, -1))
    kv16 = 2 * keys.numel() * 2
    out = press(layer, layer_idx=0, attn=None)
    assert out.nbytes <= kv16 * (0.25 + 0.0625 + 0.02)  # codes + scales/zeros + int32 positions


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_deterministic_and_bit_exact_tensor_round_trip(case, basis_file):
    press = _build(case[1], basis_file)
    first, second = _run(press), _run(_build(case[1], basis_file))
    for (_, a), (_, b) in zip(first, second, strict=True):
        ta, tb = a.tensors(), b.tensors()
        assert ta.keys() == tb.keys() and all(torch.equal(ta[n], tb[n]) for n in ta)
        assert a.meta() == b.meta()
        back = layer_class(a.layer_name).from_tensors(ta, a.meta())
        assert type(back) is type(a)
        assert all(torch.equal(x, y) for x, y in zip(back.dense(), a.dense(), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_spec_round_trips_through_build(case, basis_file):
    press = _build(case[1], basis_file)
    spec = spec_of(press)
    json.dumps(spec)  # JSON-able, as chunk keys need
    again = ragcompress.build(json.loads(json.dumps(spec)))
    assert spec_of(again) == spec
    assert type(again) is type(press)


def test_specs_differ_across_settings(basis_file):
    specs = {json.dumps(spec_of(_build(c[1], basis_file)), sort_keys=True) for c in CASES}
    assert len(specs) == len(CASES)


def test_bf16_layers_stay_bf16(basis_file):
    for case in CASES:
        press = _build(case[1], basis_file)
        for _, out in _run(press, dtype=torch.bfloat16):
            k, v, _ = out.dense()
            assert k.dtype == v.dtype == torch.bfloat16, case[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_heads_dim_is_the_dense_shape(case, basis_file):
    # a chunk reads its shape from its first layer on every store read: without decoding it
    press = _build(case[1], basis_file)
    for _, out in _run(press, dtype=torch.bfloat16):
        keys, _, _ = out.dense()
        assert out.heads_dim() == (keys.shape[0], keys.shape[2])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stored_digest_read_in_place_equals_the_tensors(case, basis_file):
    # chunk_from_bytes checks the digest from the blob's bytes; it must be the digest that
    # chunk_to_bytes wrote from the tensors, for every layer class and dtype
    press = _build(case[1], basis_file)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        layers = [out for _, out in _run(press, dtype=dtype)]
        ids = torch.arange(N)
        key = ChunkKey(model="m", layout="l", presses="p", tokens=tokens_digest(ids.tolist()))
        chunk = KVChunk(layers, ids, OFFSET, N, key, "m")
        blob = serialize.chunk_to_bytes(chunk)
        header = serialize._parse_header(blob)
        meta = serialize._metadata(header)
        in_place = serialize._blob_digest(meta, header, blob)
        assert in_place == meta[serialize.DIGEST_FIELD] == serialize._digest(meta, load(blob))
        back = serialize.chunk_from_bytes(blob, expected=key)
        assert (back.kv_heads, back.head_dim) == (chunk.kv_heads, chunk.head_dim) == (KV_HEADS, HEAD_DIM)
