"""Local sliding-window layers are not written for chunks too far back to be seen
(ragcompress/kv/fast/local_layers.py): the question's logits are unchanged, the skipped rows are
untouched, and a resident chunk that a later request reads nearer its question is completed."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import FastGenerator, PackedChunk
from ragcompress.kv.fast.local_layers import LocalLayers
from ragcompress.models.arch import arch_for
from tests.support.tiny import make_tiny_gemma3, make_tiny_llama

from .test_fast_path import _separate_chunks, sample_request

STALE = 1e4  # finite: a row the attention weighs at zero adds nothing, a row it reads is visible


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_gemma3(len(tokenizer), seed=3)
    prefix, passages, question = sample_request(len(tokenizer))
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)  # stored KVChunks, #1 evicted by half
    return model, PackedChunk.from_prefix(prefix_kv), chunks, question


def _engine(model, skip: bool) -> FastGenerator:
    fast = FastGenerator(model, capacity=64, max_question=8, max_new_tokens=2)
    if not skip:
        fast.buffer.local = None  # every layer of every chunk, as before
    fast.buffer.ctx_keys.fill_(STALE)
    fast.buffer.ctx_values.fill_(STALE)
    return fast


def _logits(fast: FastGenerator, question) -> torch.Tensor:
    fast.prefill([question])
    assert fast.last_logits is not None
    return fast.last_logits[0].clone()


def test_far_chunks_skip_their_local_layers_and_the_answer_is_unchanged(setup):
    model, prefix, chunks, question = setup
    local = LocalLayers.of(arch_for(model))
    assert local is not None and local.window == 6 and local.local and local.others
    want_fast = _engine(model, skip=False)
    want_fast.load(prefix, chunks)
    want = _logits(want_fast, question)
    fast = _engine(model, skip=True)
    end = fast.load(prefix, chunks)
    got = _logits(fast, question)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # slots of chunk #0 (positions 9..25, all ≤ end - window = 48): global layers written,
    # local layers left as they were; the last chunk's slots: every layer written
    first = prefix.num_tokens
    c0 = slice(first, first + chunks[0].num_tokens)
    last = slice(fast.buffer.ctx_len - chunks[2].num_tokens, fast.buffer.ctx_len)
    assert end == 54 and fast._partial == frozenset({1, 2})  # chunks #0 and #1 (the prefix is packed)
    keys = fast.buffer.ctx_keys
    assert (keys[c0][:, list(local.local)] == STALE).all()
    assert (keys[c0][:, list(local.others)] != STALE).all()
    assert (keys[last] != STALE).all()


def test_a_resident_chunk_read_nearer_its_question_gets_its_local_layers(setup):
    model, prefix, chunks, question = setup
    fast = _engine(model, skip=True)
    fast.load(prefix, chunks)  # chunk #1 (positions 26..30) is far from 54
    end = fast.load_reusing(prefix, chunks[:2])  # now its question starts at 31: #1 is near
    assert end == 31 and fast._partial == frozenset({1})  # #0 (9..25) is still out of reach
    got = _logits(fast, question)
    fresh = _engine(model, skip=False)
    fresh.load(prefix, chunks[:2])
    torch.testing.assert_close(got, _logits(fresh, question), atol=1e-5, rtol=1e-5)
    # and back to the long request: chunk #0 and #1 resident, #2 written anew, nothing lost
    fast.load_reusing(prefix, chunks)
    fresh.load(prefix, chunks)
    torch.testing.assert_close(_logits(fast, question), _logits(fresh, question), atol=1e-5, rtol=1e-5)


def test_families_without_local_layers_write_every_layer(tokenizer):
    llama = make_tiny_llama(len(tokenizer), seed=3)
    assert LocalLayers.of(arch_for(llama)) is None
    assert FastGenerator(llama, capacity=16, max_question=8, max_new_tokens=2).buffer.local is None


def test_far_means_out_of_every_later_tokens_window():
    # a question at 31 with window 6 sees keys at positions 26..31 (31 - k < 6), later tokens fewer
    local = LocalLayers(window=6, local=(0,), others=(1,))
    assert local.far(9, 17, 31)  # 9..25
    assert not local.far(9, 18, 31)  # 9..26: its last token is in the window
    assert not local.far(30, 1, 31)
