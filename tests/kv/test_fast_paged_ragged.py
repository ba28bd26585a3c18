"""Ragged batches on the paged engine (PagedFastGenerator.load_batch): several questions in one
step, each over its own chunk set read in place through its own block table. Each question's
tokens are the ones it gets alone; both paged kernels (Triton, interpreted) match the torch
reference per question; placement is all or nothing. tests/gpu/test_fast_paged_gpu.py runs it
compiled, in graphs, in bf16."""

from __future__ import annotations

from typing import Any

import pytest

from ragcompress.kv.fast import Int4ChunkPool, PackedChunk
from ragcompress.kv.fast.buffer import BufferOverflowError
from ragcompress.kv.fast.paged import BlockTable
from ragcompress.kv.fast.paged_engine import PagedFastGenerator
from ragcompress.kv.fast.pool import ChunkPool, PoolFullError
from tests.support.interpret import run_interpreted

from .test_fast_paged import setup  # noqa: F401  (the module fixture)
from .test_fast_path import _separate_chunks

# each question its own chunk set: reordered, a chunk twice, a subset, none
SETS = ([0, 1, 2], [2, 0], [1, 1, 0], [2], [])


def _paged(model: Any, pool: ChunkPool, batch: int) -> PagedFastGenerator:
    return PagedFastGenerator(
        model, capacity=80, max_question=16, max_new_tokens=8, max_batch=batch, buckets=(8, 16), pool=pool
    )


@pytest.mark.parametrize("pool_kind", ["model", "int4"])
def test_a_ragged_batch_answers_each_question_as_it_is_answered_alone(setup, pool_kind):  # noqa: F811
    """Five questions over five different chunk sets in one step (prefill and decode): each
    gets the greedy tokens it gets alone over its own set, whether the batch comes first or
    after a shared load, and a shared load after the batch answers as before it."""
    model, gen, prefix, passages, questions = setup
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pre, items = PackedChunk.from_prefix(prefix_kv), [PackedChunk.from_chunk(c) for c in chunks]
    pool_cls = Int4ChunkPool if pool_kind == "int4" else ChunkPool
    pool = (
        pool_cls.for_model(model, 256, 4) if pool_kind == "model" else Int4ChunkPool.for_model(model, 256, 8)
    )
    assert isinstance(pool, pool_cls)
    paged = _paged(model, pool, len(SETS))
    qs = [questions[i % len(questions)] for i in range(len(SETS))]
    alone = []
    for s, q in zip(SETS, qs, strict=True):
        pos = paged.load(pre, [items[i] for i in s])
        alone.append((pos, paged.generate([q], 8, gen.stop_ids)[0]))
    starts = paged.load_batch([(pre, [items[i] for i in s]) for s in SETS])
    assert starts == [pos for pos, _ in alone]
    assert paged.generate(qs, 8, gen.stop_ids) == [toks for _, toks in alone]
    # a shared load after the batch: the shared tables and graphs again
    paged.load(pre, [items[i] for i in SETS[0]])
    assert paged.generate([qs[0]], 8, gen.stop_ids)[0] == alone[0][1]
    with pytest.raises(ValueError, match="5 questions, but 2 contexts"):
        paged.load_batch([(pre, [items[0]]), (pre, [items[1]])])
        paged.generate(qs, 8, gen.stop_ids)


def test_a_ragged_batch_is_placed_whole_or_not_at_all(setup):  # noqa: F811
    """A batch whose chunks do not fit the pool together fails with PoolFullError, keeps the
    previous request answering as before and leaks no lease (the whole pool is usable after
    release); too many requests, or one past capacity, fail before anything is leased."""
    model, gen, prefix, passages, questions = setup
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pre, items = PackedChunk.from_prefix(prefix_kv), [PackedChunk.from_chunk(c) for c in chunks]
    sizes = [-(-c.num_tokens // 4) for c in (pre, *items)]
    pool = ChunkPool.for_model(model, 4 * (sum(sizes) - 1), 4)  # one block short of all of them
    paged = _paged(model, pool, 3)
    pos = paged.load(pre, [items[0]])
    want = paged.generate([questions[0]], 8, gen.stop_ids)[0]
    with pytest.raises(PoolFullError):
        paged.load_batch([(pre, [items[0]]), (pre, [items[1]]), (pre, [items[2]])])
    assert paged.load(pre, [items[0]]) == pos
    assert paged.generate([questions[0]], 8, gen.stop_ids)[0] == want
    with pytest.raises(BufferOverflowError, match="max_batch=3"):
        paged.load_batch([(pre, [items[0]])] * 4)
    with pytest.raises(BufferOverflowError, match="capacity=80"):
        paged.load_batch([(pre, [items[0]]), (pre, [items[0]] * 5)])
    paged.release()
    # every block but one: fits only if the failed batch left nothing leased
    big = [items[2], items[0]] if sizes[3] + sizes[1] >= sizes[2] + sizes[1] else [items[2], items[1]]
    paged.load(pre, big)
    assert pool.num_blocks - pool.free_blocks >= sum(-(-c.num_tokens // 4) for c in (pre, *big))


def test_block_table_of_several_questions():
    """write_ragged publishes one table per question (the rest keep theirs); write() and too
    many tables are refused; clear() empties every question's."""
    t = BlockTable(4, questions=3)
    assert t.rows.shape == (3, 5, 3)
    t.write_ragged([[(1, 4, 0), (2, 3, 0)], [], [(7, 1, -2)]])
    assert t.rows[:, 0, 0].tolist() == [2, 0, 1] and t.rows[2, 1].tolist() == [7, 1, -2]
    t.write_ragged([[(5, 2, 1)]])
    assert t.rows[:, 0, 0].tolist() == [1, 0, 1] and t.question_rows(2).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="write_ragged"):
        t.write([(1, 1, 0)])
    with pytest.raises(ValueError, match=r"1\.\.3 tables"):
        t.write_ragged([[]] * 4)
    with pytest.raises(BufferOverflowError, match="max_blocks=4"):
        t.write_ragged([[(0, 1, 0)] * 5])
    t.clear()
    assert t.rows[:, 0, 0].tolist() == [0, 0, 0]
    one = BlockTable(4, questions=1)  # a ragged batch of at most one question: the plain table
    one.write_ragged([[(3, 2, 1)]])
    assert one.rows.shape == (5, 3) and one.rows[:2].tolist() == [[1, 0, 0], [3, 2, 1]]


_RAGGED_CHECK = """
import torch
from tests.support.partials import check_partials
from ragcompress.kv.fast import Int4ChunkPool, PackedChunk
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast._paged_int4 import paged_int4_context
from ragcompress.kv.fast.paged import paged_context_reference, per_question
from ragcompress.kv.fast.paged_int4 import paged_int4_reference

g = torch.Generator().manual_seed(5)
bs, layers, kvh, grp, d = 16, 2, 2, 2, 32
pool = Int4ChunkPool(layers=layers, kv_heads=kvh, head_dim=d, num_blocks=8, block_size=bs)
kv = [[torch.randn(t, layers, kvh, d, generator=g) for _ in range(2)] for t in (39, 30, 1)]
e0, e1, e2 = pool.acquire([PackedChunk(k, v, length=k.shape[0], base_offset=0) for k, v in kv]).entries
dk, dv = (torch.randn(8 * bs, kvh, d, generator=g) for _ in range(2))
inv = 1.0 / (1e4 ** (torch.arange(0, d, 2).float() / d))
run0 = [(b, min(bs, 39 - j * bs), 40) for j, b in enumerate(e0.blocks)]
run1 = [(b, min(bs, 30 - j * bs), -7) for j, b in enumerate(e1.blocks)]
# three questions: two chunks, one block of a third, none (rows past a count left as garbage)
per_q = [run0 + run1, [(e2.blocks[0], 1, 3)] + run1, []]
table = torch.full((4, 8, 3), 999, dtype=torch.int32)  # room for a 4th question no step reads
for i, rows in enumerate(per_q):
    table[i, 0] = torch.tensor([len(rows), 0, 0])
    if rows:
        table[i, 1 : 1 + len(rows)] = torch.tensor(rows, dtype=torch.int32)
table = table[:3]
views = (pool.keys[:, 1], pool.key_scale[:, 1], pool.key_zero[:, 1],
         pool.values[:, 1], pool.value_scale[:, 1], pool.value_zero[:, 1])
for n in (5, 40):  # 10 folded rows a question (one masked program each), 80 (two programs each)
    q = torch.randn(3 * n, kvh * grp, d, generator=g)
    sc = d**-0.5
    ref = per_question(lambda qb, tb: paged_context_reference(qb, dk, dv, tb, inv, bs, sc), q, table)
    for splits in (1, 3):
        check_partials(*paged_context(q, dk, dv, table, inv, bs, splits, sc), splits, kvh, *ref)
    ref = per_question(lambda qb, tb: paged_int4_reference(qb, views, tb, inv, bs, d**-0.5), q, table)
    for splits in (1, 3):
        check_partials(*paged_int4_context(q, views, table, inv, bs, splits, d**-0.5), splits, kvh, *ref)
    print("tokens", n, "match")
"""


def test_paged_kernels_read_each_questions_table():
    """Both paged kernels (interpreted) over per-question tables == the torch reference run per
    question: questions of 10 folded rows (a program each, mostly masked) and of 80 (two
    programs each), one question with an empty table, garbage past each count."""
    assert run_interpreted(_RAGGED_CHECK).splitlines() == ["tokens 5 match", "tokens 40 match"]


def test_answer_batch_gives_each_question_its_answer_alone(tokenizer, tiny_llama):
    """FastKVAnswerer.answer_batch: three questions over three passage lists, ragged steps of
    two on a paged placement, give the tokens answer() gives each alone (and so does the copy
    placement, one after another); a bad request fails before any question runs."""
    from ragcompress.generate import Generator
    from ragcompress.kv.fast import PagedPlacement
    from ragcompress.kv.fast.answer import FastKVAnswerer

    from .test_fast_answer import PASSAGES, QUESTIONS

    gen = Generator.from_model(tiny_llama, tokenizer, max_new_tokens=10)
    paged = FastKVAnswerer.from_generator(
        gen, capacity=512, max_question=64, max_batch=2, placement=PagedPlacement(1024, 16)
    )
    copy = FastKVAnswerer.from_generator(gen, capacity=512, max_question=64)
    queries = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]]
    lists = [PASSAGES, PASSAGES[1:], PASSAGES[::-1]]
    alone = [paged.answer(q, p) for q, p in zip(queries, lists, strict=True)]
    got = paged.answer_batch(queries, lists)
    assert [a.token_ids for a in got] == [a.token_ids for a in alone]
    assert [a.stats.extra["batch"] for a in got] == [2, 2, 1]
    assert [a.stats.extra["chunks"] for a in got] == [3, 2, 3]
    assert [a.token_ids for a in copy.answer_batch(queries, lists)] == [a.token_ids for a in alone]
    with pytest.raises(ValueError, match="one list per query"):
        paged.answer_batch(queries, lists[:2])
    with pytest.raises(TypeError, match="decode it first"):
        paged.answer_batch([QUESTIONS[0], b"bytes"], lists[:2])  # type: ignore[list-item]


def test_a_ragged_batch_of_one_on_a_generator_of_batch_one(setup):  # noqa: F811
    """max_batch 1 (the default): load_batch of one request answers as load does."""
    model, gen, prefix, passages, questions = setup
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pre, items = PackedChunk.from_prefix(prefix_kv), [PackedChunk.from_chunk(c) for c in chunks]
    paged = _paged(model, ChunkPool.for_model(model, 256, 4), 1)
    pos = paged.load(pre, items[::-1])
    want = paged.generate([questions[1]], 8, gen.stop_ids)
    assert paged.load_batch([(pre, items[::-1])]) == [pos]
    assert paged.generate([questions[1]], 8, gen.stop_ids) == want
