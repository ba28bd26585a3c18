"""Presses inside the KV path on the tiny seeded Llama: chunk keys, storage round trips and
the logits of a question answered from compressed chunks."""

from __future__ import annotations

import pytest
import torch

import ragcompress
from ragcompress.generate import Generator
from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.context import chunk_context
from ragcompress.kv.encode.calibrate import calibrate
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.presses import QuantizedLayer
from ragcompress.kv.store.disk import DiskStore
from ragcompress.models.compat import cache_kwargs

from ..conftest import PASSAGES, QUESTION

SPECS = [
    {"name": "knorm", "ratio": 0.0},
    {"name": "knorm", "ratio": 0.5},
    {"name": "window", "ratio": 0.5},
    {"name": "window", "ratio": 0.5, "sinks": 2},
    {"name": "observed", "ratio": 0.5},
    {"name": "kvzip", "ratio": 0.5},
    {"name": "kvzip", "ratio": 0.5, "prompt": "Repeat:"},
    {"name": "quantize", "bits": 8},
    {"name": "quantize", "bits": 4},
    {"name": "quantize", "bits": 4, "group_size": 16},
    [{"name": "knorm", "ratio": 0.5}, {"name": "quantize", "bits": 4}],
]


@pytest.fixture(scope="module")
def encoder(tiny_llama, tokenizer):
    return ChunkEncoder.from_generator(Generator.from_model(tiny_llama, tokenizer))


def question_logits(model, layout, chunks) -> torch.Tensor:
    cache, pos = chunk_context(model, layout, chunks)
    ids = layout.question_ids(QUESTION)
    phys = cache.get_seq_length()
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([ids]),
            **cache_kwargs(model, cache),
            position_ids=torch.arange(pos, pos + len(ids))[None],
            cache_position=torch.arange(phys, phys + len(ids)),
        )
    return out.logits[0, -1]


def test_chunk_keys_differ_across_press_settings(encoder):
    ids = encoder.passage_ids(ragcompress.Passage(PASSAGES[0]))
    digests = {encoder.key(ids, [ragcompress.build(s)]).digest for s in SPECS}
    digests.add(encoder.key(ids, []).digest)
    assert len(digests) == len(SPECS) + 1


def test_compressed_chunks_reload_bit_exactly_from_disk(encoder, tmp_path):
    spec = [{"name": "knorm", "ratio": 0.5}, {"name": "quantize", "bits": 4}]
    chunks, _ = ChunkCache(encoder, DiskStore(tmp_path), presses=[spec]).get_or_encode(PASSAGES)
    again, stats = ChunkCache(encoder, DiskStore(tmp_path), presses=[spec]).get_or_encode(PASSAGES)
    assert stats.hits == len(PASSAGES) and stats.encoded == 0
    for a, b in zip(chunks, again, strict=True):
        # half the tokens at ~4.5 bits (tiny head_dim 16: scales weigh more than at real sizes)
        assert a.nbytes == b.nbytes < 0.3 * a.nbytes_fp16
        for la, lb in zip(a.layers, b.layers, strict=True):
            assert isinstance(lb, QuantizedLayer)
            ta, tb = la.tensors(), lb.tensors()
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k].to(ta[k].device)) for k in ta)
            assert la.meta() == lb.meta()


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "knorm", "ratio": 0.0},
        {"name": "window", "ratio": 0.0},
        {"name": "observed", "ratio": 0.0},
        {"name": "kvzip", "ratio": 0.0},
    ],
)
def test_noop_presses_give_the_uncompressed_logits(encoder, tiny_llama, spec):
    plain = encoder.encode(PASSAGES)
    pressed = encoder.encode(PASSAGES, [ragcompress.build(spec)])
    ref = question_logits(tiny_llama, encoder.layout, plain)
    got = question_logits(tiny_llama, encoder.layout, pressed)
    if spec["name"] == "observed":  # encoded with eager attention (for the weights): fp32 noise only
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(got, ref)


def test_fidelity_degrades_with_fewer_bits_and_fewer_tokens(encoder, tiny_llama):
    ref = question_logits(tiny_llama, encoder.layout, encoder.encode(PASSAGES))

    def err(spec) -> float:
        chunks = encoder.encode(PASSAGES, [ragcompress.build(spec)])
        return float((question_logits(tiny_llama, encoder.layout, chunks) - ref).abs().max())

    e8, e4 = err({"name": "quantize", "bits": 8}), err({"name": "quantize", "bits": 4})
    assert 0 < e8 < e4
    assert err({"name": "window", "ratio": 0.2}) < err({"name": "window", "ratio": 0.8})


def test_calibrated_full_rank_basis_reproduces_the_logits(encoder, tiny_llama, tokenizer, tmp_path):
    basis = calibrate(tiny_llama, tokenizer, PASSAGES * 2, rank=16)
    path = tmp_path / "basis.safetensors"
    basis.save(path)
    ref = question_logits(tiny_llama, encoder.layout, encoder.encode(PASSAGES))
    full = encoder.encode(PASSAGES, [ragcompress.build({"name": "lowrank", "basis": str(path)})])
    torch.testing.assert_close(question_logits(tiny_llama, encoder.layout, full), ref, atol=1e-3, rtol=1e-3)
    low = encoder.encode(PASSAGES, [ragcompress.build({"name": "lowrank", "basis": str(path), "rank": 4})])
    assert low[0].nbytes < full[0].nbytes
