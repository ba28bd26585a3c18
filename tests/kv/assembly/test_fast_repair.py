"""Selective recompute on the fast engine repairs the engine's own buffer in place (CPU: the
engine's reference kernels): the buffer then holds the eager path's repaired context, and the next
load does not take the repaired bytes for the chunks' own."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.encode.encoder import prefix_kv
from ragcompress.kv.fast import PackedChunk
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.quantize import QuantizePress
from tests.support.interpret import run_interpreted

from ..conftest import PASSAGES, QUESTION

MODES = [
    {"name": "blend", "recompute": 0.3},
    {"name": "blend_question", "recompute": 0.3},
    {"name": "blend_question", "recompute": 0.3, "draft_tokens": 2},
    {"name": "blend_link", "recompute": 0.3},
]
PRESSES = {"full": (), "knorm+int4": (KnormPress(ratio=0.5), QuantizePress(bits=4, group_size=8))}


def fast_request(model, tokenizer, spec, presses=()):
    """(answerer, engine, prefix, packed prefix, chunks, question ids) of one request."""
    gen = Generator.from_model(model, tokenizer, max_new_tokens=6)
    with pytest.warns(RuntimeWarning, match="reference kernels"):
        fast = FastKVAnswerer.from_generator(
            gen, presses=presses, assembly=spec, capacity=512, max_question=64
        )
    chunks, _ = fast.cache.get_or_encode(PASSAGES)
    prefix = prefix_kv(gen.lm, gen.layout)
    ids = gen.layout.question_ids(QUESTION, ())
    return fast, fast.engine, prefix, PackedChunk.from_prefix(prefix), chunks, ids


def buffer_context(engine):
    """Per layer (keys, values) (1, kv_heads, slots, head_dim): copies of the buffer's context."""
    return [(k.clone(), v.clone()) for k, v in engine.buffer.context_layers()]


def assert_same_context(got, cache):
    for (k, v), layer in zip(got, cache.layers, strict=True):
        torch.testing.assert_close(k, layer.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v, layer.values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("presses", list(PRESSES.values()), ids=list(PRESSES))
@pytest.mark.parametrize("spec", MODES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_fast_repair_leaves_the_eager_context_in_the_buffer(tiny_llama, tokenizer, spec, presses):
    fast, engine, prefix, packed, chunks, ids = fast_request(tiny_llama, tokenizer, spec, presses)
    mode = fast.assembly
    position, share = mode.load_fast(engine, packed, tiny_llama, prefix, chunks, ids)
    want = build_assembly(spec).prepare(tiny_llama, prefix, chunks, ids)
    assert (position, engine.buffer.ctx_len) == (want.position, want.slots)
    assert share == pytest.approx(want.recompute) and share > 0
    assert_same_context(buffer_context(engine), want.cache)


def test_fast_repair_of_each_family(reader, tokenizer):
    """Llama and Qwen2 repair the buffer in place; Gemma 3, whose buffer leaves far chunks out
    of its local layers, repairs an assembled cache and writes it: the same tokens either way."""
    spec = {"name": "blend_question", "recompute": 0.3}
    fast, engine, prefix, packed, chunks, ids = fast_request(reader, tokenizer, spec)
    position, _ = fast.assembly.load_fast(engine, packed, reader, prefix, chunks, ids)
    want = fast.assembly.prepare(reader, prefix, chunks, ids)
    assert position == want.position
    if not engine.buffer.positions:
        assert_same_context(buffer_context(engine), want.cache)
    eager = Generator.from_model(reader, tokenizer, max_new_tokens=6)
    from ragcompress.kv.answer import KVAnswerer

    kv = KVAnswerer.from_generator(eager, assembly=spec)
    assert fast.answer(QUESTION, PASSAGES).token_ids == kv.answer(QUESTION, PASSAGES).token_ids


def test_a_load_after_a_repair_writes_the_chunks_again(tiny_llama, tokenizer):
    """The repaired bytes sit where the chunks were loaded: a later load of the same chunk objects
    (which would otherwise reuse what the buffer holds) writes them again."""
    spec = {"name": "blend_question", "recompute": 0.5}
    fast, engine, prefix, packed, chunks, ids = fast_request(tiny_llama, tokenizer, spec)
    engine.load_reusing(packed, chunks)
    concat = buffer_context(engine)
    fast.assembly.load_fast(engine, packed, tiny_llama, prefix, chunks, ids)
    repaired = buffer_context(engine)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(concat, repaired, strict=True))
    engine.load_reusing(packed, chunks)
    for (k, v), (k0, v0) in zip(buffer_context(engine), concat, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)


@pytest.mark.parametrize("voters", [None, 1, 5], ids=["all", "last", "last5"])
def test_engine_probe_ranks_as_the_eager_probe(reader, tokenizer, voters):
    """The probe on the engine's own step gives the eager probe's scores (one prefill, its
    attention output untouched: the next prefill's first token is the plain one's)."""
    from ragcompress.kv.assembly.blend_question import question_attention

    spec = {"name": "blend_question", "recompute": 0.3}
    _fast, engine, prefix, packed, chunks, ids = fast_request(reader, tokenizer, spec)
    position = engine.load_reusing(packed, chunks)
    first = engine.prefill([ids]).item()
    if engine.buffer.positions:  # Gemma 3's local layers: the eager probe ranks for it
        with pytest.raises(ValueError, match="sliding window"):
            engine.probe(ids, voters)
        return
    got = engine.probe(ids, voters)
    dense = build_assembly("concat").prepare(reader, prefix, chunks, ids)
    want = question_attention(reader, dense.cache, ids, position, None, voters)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert engine.prefill([ids]).item() == first


def test_a_draft_longer_than_the_question_buffer_ranks_on_the_eager_model(tiny_llama, tokenizer):
    spec = {"name": "blend_question", "recompute": 0.3, "draft_tokens": 4}
    fast, engine, _prefix, packed, chunks, ids = fast_request(tiny_llama, tokenizer, spec)
    engine.load_reusing(packed, chunks)
    long = (ids * engine.max_question)[: engine.max_question - 1]
    assert fast.assembly.score_fast(engine, long, [7, 8]) is None
    assert fast.assembly.score_fast(engine, long, []) is not None
    assert fast.assembly.score_fast(engine, ids, [7, 8]) is not None


def test_the_repair_runs_on_the_engine_step(reader, tokenizer, monkeypatch):
    """Llama and Qwen2: the recomputed tokens run on the engine's own step, no transformers
    forward (which would fail here); Gemma 3 (local layers) still takes the transformers one."""
    from ragcompress.kv.assembly import recompute

    spec = {"name": "blend_question", "recompute": 0.3}
    fast, engine, prefix, packed, chunks, ids = fast_request(reader, tokenizer, spec)
    want = fast.assembly.prepare(reader, prefix, chunks, ids)  # before the forward is cut off
    calls = []
    monkeypatch.setattr(recompute, "recompute_slots", lambda *a: calls.append(a))
    fast.assembly.load_fast(engine, packed, reader, prefix, chunks, ids)
    if engine.buffer.positions:
        assert len(calls) == 1
        return
    assert not calls
    assert_same_context(buffer_context(engine), want.cache)


_FUSED_REPAIR = """
import os

from ragcompress.generate import Generator
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.encode.encoder import prefix_kv
from ragcompress.kv.fast import FusedStep, PackedChunk
from ragcompress.kv.fast.answer import FastKVAnswerer
from tests.kv.assembly.test_fast_repair import assert_same_context, buffer_context
from tests.kv.conftest import PASSAGES, QUESTION
from ragcompress.models.load import load_tokenizer
from tests.support.tiny import make_tiny_llama

FusedStep.unsupported = staticmethod(lambda model: None)  # off CUDA: the kernels interpreted
path = os.environ.get("RAGCOMPRESS_TEST_TOKENIZER")  # as the tokenizer fixture finds it
if path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
else:
    tok = load_tokenizer()
model = make_tiny_llama(len(tok), seed=3)
gen = Generator.from_model(model, tok, max_new_tokens=6)
spec = {"name": "blend_question", "recompute": 0.3}
fast = FastKVAnswerer.from_generator(gen, assembly=spec, capacity=512, max_question=64)
assert isinstance(fast.engine._step, FusedStep)
chunks, _ = fast.cache.get_or_encode(PASSAGES)
prefix = prefix_kv(model, gen.layout)
ids = gen.layout.question_ids(QUESTION, ())
fast.assembly.load_fast(fast.engine, PackedChunk.from_prefix(prefix), model, prefix, chunks, ids)
want = build_assembly(spec).prepare(model, prefix, chunks, ids)
assert_same_context(buffer_context(fast.engine), want.cache)
"""


def test_the_fused_step_repairs_as_the_eager_path():
    """The fused step's kernels (RoPE written into the context rows through the buffer's layer
    stride, fused norms and MLP) in the Triton interpreter: the buffer holds the eager repair.
    In a fresh process: Triton's nested helpers only run interpreted when TRITON_INTERPRET=1 is
    set before triton is first imported."""
    run_interpreted(_FUSED_REPAIR)
