"""Loading a context into the fast engine's buffer: what ``load_reusing`` writes again and
what it keeps, and chunks that do not fit refused before any write. The steps' tokens are
tests/kv/test_fast_path.py's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ragcompress.kv.fast import FastGenerator, PackedChunk

from .test_fast_path import _separate_chunks, _split
from .test_fast_path import setup as setup  # the module's fixture, used here too


def test_load_reusing_skips_resident_chunks_only(setup):
    """load_reusing writes only what differs from the last load (same chunk objects in the same
    order keep their slots); everything after the first difference is rewritten."""
    model, gen, prefix, passages, questions = setup
    pre, chunks = _split(model, prefix, passages)
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8)
    fast.load(pre, chunks)
    want = fast.generate([questions[0]], 8, gen.stop_ids)
    assert fast.load_reusing(pre, chunks) == fast.buffer.next_position
    assert fast.generate([questions[0]], 8, gen.stop_ids) == want
    buf = fast.buffer
    buf.ctx_values[0] = 123.0  # a resident slot: must not be rewritten
    fast.load_reusing(pre, [chunks[0], chunks[2]])
    assert (buf.ctx_values[0] == 123.0).all()
    other = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8)
    other.load(pre, [chunks[0], chunks[2]])
    n = other.buffer.ctx_len
    assert (buf.ctx_len, buf.next_position) == (n, other.buffer.next_position)
    assert torch.equal(buf.ctx_keys[1:n], other.buffer.ctx_keys[1:n])  # moved chunk #2 rewritten
    fast.load(pre, chunks)  # the cold load writes everything again
    assert torch.equal(buf.ctx_values[0], pre.values[0])


def test_the_same_context_again_writes_nothing_until_something_else_wrote_it(setup):
    """load_reusing of exactly the last load's chunks writes nothing and keeps the context
    length and positions (the answer is the same); after a view handed out for a repair
    (``context_views``) or a context written as is (``load_context``), it rewrites them all."""
    model, gen, prefix, passages, questions = setup
    pre, chunks = _split(model, prefix, passages)
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8)
    nxt = fast.load(pre, chunks)
    want = fast.generate([questions[0]], 8, gen.stop_ids)
    buf = fast.buffer
    state = (buf.ctx_len, buf.next_position, int(buf.ctx_len_t))
    mark = buf.ctx_values[0].clone()
    buf.ctx_values[0] = 123.0
    assert fast.load_reusing(pre, chunks) == nxt
    assert (buf.ctx_values[0] == 123.0).all()  # nothing written
    assert (buf.ctx_len, buf.next_position, int(buf.ctx_len_t)) == state
    buf.ctx_values[0] = mark
    assert fast.generate([questions[0]], 8, gen.stop_ids) == want
    one_token = [(k[0, :, :1].clone(), v[0, :, :1].clone()) for k, v in buf.context_layers()]
    for hand_out in (fast.context_views, lambda: fast.load_context(one_token, 1)):
        hand_out()
        buf.ctx_values[0] = 123.0
        assert fast.load_reusing(pre, chunks) == nxt
        assert torch.equal(buf.ctx_values[0], pre.values[0]), hand_out  # rewritten
        assert (buf.ctx_len, buf.next_position, int(buf.ctx_len_t)) == state
        assert fast.generate([questions[0]], 8, gen.stop_ids) == want


def test_a_chunk_that_does_not_fit_the_buffer_is_refused_before_any_write(setup):
    """Each chunk kind checks itself against the buffer; a wrong one is named and nothing of
    the request is written (the previous context stays loaded)."""
    model, gen, prefix, passages, questions = setup
    pre, chunks = _split(model, prefix, passages)
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8)
    fast.load(pre, chunks)
    want = fast.generate([questions[0]], 8, gen.stop_ids)
    keys = fast.buffer.ctx_keys.clone()
    k = torch.randn(3, fast.buffer.layers + 1, fast.buffer.kv_heads, fast.buffer.head_dim)
    _, stored = _separate_chunks(model, prefix, passages)
    short = dataclasses.replace(stored[0], layers=stored[0].layers[:1])  # a stored chunk of 1 layer
    for bad in (PackedChunk(k, k.clone(), 3, 0), short):
        with pytest.raises(ValueError, match=r"chunk #1 has \(layers, kv_heads, head_dim\)"):
            fast.load(pre, [chunks[0], bad])
        assert torch.equal(fast.buffer.ctx_keys, keys) and fast.buffer.ctx_len == pre.num_tokens + 45
    assert fast.generate([questions[0]], 8, gen.stop_ids) == want
