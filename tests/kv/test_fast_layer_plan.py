"""A stored chunk's dense layers are planned once per chunk and buffer
(ragcompress/kv/fast/layer_plan.py): the buffer gets what the per-layer path gave, whichever
engine reads the chunk, and only dense layers on the buffer's device are planned."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import FastGenerator, PackedChunk
from ragcompress.kv.fast.layer_plan import dense_plan
from ragcompress.kv.fast.rows import GatherRows
from ragcompress.kv.fast.stored import StoredChunk
from tests.support.tiny import make_tiny_llama

from .test_fast_path import _separate_chunks, sample_request


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=3)
    prefix, passages, _ = sample_request(len(tokenizer))
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    return model, PackedChunk.from_prefix(prefix_kv), chunks


def _context(fast: FastGenerator) -> tuple[torch.Tensor, torch.Tensor]:
    n = fast.buffer.ctx_len
    return fast.buffer.ctx_keys[:n].clone(), fast.buffer.ctx_values[:n].clone()


def test_planned_layers_write_what_packed_chunks_write(setup):
    model, prefix, chunks = setup
    a, b = (FastGenerator(model, capacity=64, max_question=8, max_new_tokens=2) for _ in range(2))
    packed = FastGenerator(model, capacity=64, max_question=8, max_new_tokens=2)
    order = [chunks[2], chunks[0], chunks[1]]  # moved: every delta differs from the encoding's
    packed.load(prefix, [PackedChunk.from_chunk(c) for c in order])
    for engine in (a, b, a):  # two buffers in turn: each plan counts from its own buffer
        engine.load(prefix, order)
        got, want = _context(engine), _context(packed)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    plan = dense_plan(order[0], a.buffer)
    assert plan is not None and dense_plan(order[0], a.buffer) is plan  # made once, then kept


def test_a_block_holds_the_per_layer_entries(setup):
    model, _, chunks = setup
    fast = FastGenerator(model, capacity=64, max_question=8, max_new_tokens=2)
    planned, single = GatherRows(fast.buffer), GatherRows(fast.buffer)
    StoredChunk.of(chunks[0]).gather_layers(planned, 11, -4, [1, 0])
    assert len(planned.blocks) == 1 and not planned.dense
    stacked = fast.buffer.layers * fast.buffer.kv_heads
    for li in (0, 1):
        k, v, _ = chunks[0].layers[li].dense()
        single.add_dense(k, v, 11 * stacked + li * fast.buffer.kv_heads, int(k.shape[1]), stacked, -4)
    got, want = planned.dense_table(), single.dense_table()
    assert got is not None and want is not None
    assert torch.equal(got[0], want[0]) and got[1] == want[1]


def test_only_dense_layers_on_the_buffers_device_and_dtype_are_planned(setup):
    from ragcompress.kv.presses.quantize import QuantizePress

    model, _, chunks = setup
    fast = FastGenerator(model, capacity=64, max_question=8, max_new_tokens=2)
    c = chunks[0]
    quant = type(c)([QuantizePress(4, 8)(layer, layer_idx=i, attn=None) for i, layer in enumerate(c.layers)],
                    c.token_ids, c.base_offset, c.length, c.key, c.model)  # fmt: skip
    assert dense_plan(quant, fast.buffer) is None
    assert (
        dense_plan(c.map_tensors(lambda t: t.double() if t.is_floating_point() else t), fast.buffer) is None
    )


@pytest.mark.parametrize("layers", [None, [1]], ids=["every-layer", "some-layers"])
def test_the_blocks_table_is_each_blocks_table_in_order(setup, layers):
    """The request's table of several planned chunks, at their own slots and deltas, built in a
    few array ops == each block's per-layer rows in turn (the reference's form); the plans' own
    tables are left as they were."""
    model, _, chunks = setup
    fast = FastGenerator(model, capacity=64, max_question=8, max_new_tokens=2)
    rows = GatherRows(fast.buffer)
    for i, (c, slot, delta) in enumerate(zip(chunks, (3, 20, 11), (5, -2, 0), strict=True)):
        wanted = layers if layers is not None and i == 1 else range(len(c.layers))
        StoredChunk.of(c).gather_layers(rows, slot, delta, wanted)
    before = [b.plan.table.clone() for b in rows.blocks]
    got = rows.dense_table()
    assert got is not None
    per_layer = GatherRows(fast.buffer)  # the same rows, one dense entry per layer
    per_layer.dense = rows.all_dense()
    want = per_layer.dense_table()
    assert want is not None and torch.equal(got[0], want[0]) and got[1] == want[1]
    assert all(torch.equal(a, b.plan.table) for a, b in zip(before, rows.blocks, strict=True))
