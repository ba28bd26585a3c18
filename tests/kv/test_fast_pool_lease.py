"""The pool's lease and the block table's publishing (ragcompress/kv/fast/pool.py, paged.py):
a keyed hit of an object already checked is not checked again, and a table written after a
longer one reads only its own rows. The paged engine end to end: tests/kv/test_fast_paged.py."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast.paged import BlockTable, paged_context_reference
from ragcompress.kv.fast.pool import ChunkPool, block_runs
from tests.conftest import make_tiny_llama

from .test_fast_paged import _chunk, _pool
from .test_fast_path import _ids, _separate_chunks


@pytest.fixture(scope="module")
def stored(tokenizer):
    """A tiny Llama, a prefix and three passages of token ids."""
    model = make_tiny_llama(len(tokenizer), seed=3)
    rng = torch.Generator().manual_seed(7)
    return model, _ids(rng, 9, len(tokenizer)), [_ids(rng, n, len(tokenizer)) for n in (17, 5, 23)]


def test_a_keyed_hit_checks_a_new_object_once_and_the_same_object_never(stored, monkeypatch):
    """A stored chunk is checked when it enters; leased again, the very object is not checked
    again, and a new object under the same key (fetched again from a store) is checked once."""
    model, prefix, passages = stored
    _, first = _separate_chunks(model, prefix, passages)
    _, again = _separate_chunks(model, prefix, passages)
    pool = ChunkPool.for_model(model, 256, 4)
    checked: list[object] = []
    real = pool._check
    monkeypatch.setattr(pool, "_check", lambda c, what: (checked.append(c), real(c, what)))
    pool.release(pool.acquire(first))
    pool.release(pool.acquire(first))
    assert checked == list(first)
    pool.release(pool.acquire(again))
    pool.release(pool.acquire(again))
    assert checked == [*first, *again]


def test_a_shorter_table_after_a_longer_one_reads_only_its_own_rows():
    """The table is published without clearing the rows past its count: the attention over a
    short table written after a long one equals the attention over a fresh table of the same
    rows (nothing reads past the count)."""
    torch.manual_seed(0)
    pool_k, pool_v = torch.randn(8 * 4, 2, 16), torch.randn(8 * 4, 2, 16)
    q = torch.randn(3, 4, 16)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    used, fresh = BlockTable(6), BlockTable(6)
    used.write([(7, 4, 9), (6, 4, 9), (5, 4, 9), (4, 2, 30), (3, 4, -5)])
    short = [(1, 3, 2), (0, 4, -1)]
    used.write(short)
    fresh.write(short)
    assert used.rows[:3].tolist() == fresh.rows[:3].tolist() and used.rows[3:].abs().sum() > 0
    a = paged_context_reference(q, pool_k, pool_v, used.rows, inv, 4, 0.25)
    b = paged_context_reference(q, pool_k, pool_v, fresh.rows, inv, 4, 0.25)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_block_runs_cover_every_token_once_in_order():
    """A chunk's tokens over its blocks, as (token, slot, count) per stretch of adjacent blocks:
    the slots the runs list are exactly the block-by-block slots."""
    assert block_runs((3, 4, 5), 150, 64) == [(0, 192, 150)]
    assert block_runs((2, 4, 5), 37, 16) == [(0, 32, 16), (16, 64, 21)]
    assert block_runs((7,), 1, 64) == [(0, 448, 1)]
    for blocks, n in (((9, 1, 2, 3, 0), 70), ((5, 6, 8, 9), 61), ((4, 3, 2), 48)):
        got = [(t + i, s + i) for t, s, c in block_runs(blocks, n, 16) for i in range(c)]
        assert got == [(t, blocks[t // 16] * 16 + t % 16) for t in range(n)]


def test_chunks_after_an_eviction_take_adjacent_blocks():
    """Evicted chunks free adjacent blocks; a larger chunk entering after them takes them as one
    run (the free list hands out the lowest blocks in order, not one old chunk's at a time), and
    its slots hold its keys and values."""
    pool = ChunkPool(layers=2, kv_heads=2, head_dim=16, num_blocks=8, block_size=4)
    small = [_chunk(4, s) for s in range(4)]  # one block each: 0, 1, 2, 3
    for c in small:
        pool.release(pool.acquire([c]))
    pool.acquire([_chunk(16, 9)])  # blocks 4..7: the pool is full
    big = _chunk(15, 10)  # four blocks: every small chunk goes
    e = pool.acquire([big]).entries[0]
    assert e.blocks == (0, 1, 2, 3)
    assert torch.equal(pool.keys[:15], big.keys) and torch.equal(pool.values[:15], big.values)


def test_a_request_of_resident_chunks_leases_as_the_full_path_does():
    """Every item resident (the one-pass lease): a chunk asked twice is held once, every held
    chunk becomes the most recently used, a release frees them for eviction; one item not
    resident sends the whole request down the full path (it is inserted, the others held)."""
    pool = _pool(8)
    a, b, c, d = _chunk(8, 1), _chunk(4, 2), _chunk(4, 3), _chunk(4, 4)
    for x in (a, b, c):
        pool.release(pool.acquire([x]))
    lease = pool.acquire([b, a, b])  # all resident: c is now the least recently used
    assert [e.refs for e in lease.held] == [1, 1] and lease.entries[0] is lease.entries[2]
    assert pool.resident(c) is not None and pool.resident(c).refs == 0  # type: ignore[union-attr]
    pool.release(lease)
    assert pool.resident(a).refs == pool.resident(b).refs == 0  # type: ignore[union-attr]
    mixed = pool.acquire([a, d])  # d is new (1 block of the 4 free): inserted, a held
    assert pool.resident(d) is mixed.entries[1] and mixed.entries[0] is pool.resident(a)
    pool.release(pool.acquire([_chunk(16, 5)]))  # 4 blocks, 3 free: evicts c, not the newer b
    assert pool.resident(c) is None and pool.resident(b) is not None and pool.resident(a) is not None


def test_item_deltas_place_items_one_after_another():
    """Each item moves by its place in the prompt less its base offset; the next position adds
    the items' lengths (the logical span) and the tokens kept their slots (an evicted chunk
    keeps fewer)."""
    import numpy as np

    from ragcompress.kv.fast.packed import PackedChunk
    from ragcompress.kv.fast.paged_engine import item_deltas

    pre = PackedChunk(torch.zeros(3, 1, 1, 2), torch.zeros(3, 1, 1, 2), length=3, base_offset=0)
    half = PackedChunk(torch.zeros(4, 1, 1, 2), torch.zeros(4, 1, 1, 2), length=8, base_offset=3)
    other = PackedChunk(torch.zeros(5, 1, 1, 2), torch.zeros(5, 1, 1, 2), length=5, base_offset=np.int64(3))
    deltas, pos, kept = item_deltas([pre, half, other, half])
    assert (deltas, pos, kept) == ([0, 0, 8, 13], 24, 16) and type(pos) is int and type(kept) is int
    assert item_deltas([]) == ([], 0, 0)


def test_a_follow_up_over_the_same_chunks_is_not_placed_again(stored, tokenizer, monkeypatch):
    """``load_reusing`` with the very objects of the previous placed request, in the same order,
    leases nothing and writes no table, and the next question reads the same context (the
    same tokens as after a fresh placement); another order, another set, ``load`` (no reuse),
    a release or a ragged batch in between each place it again."""
    from ragcompress.kv.fast import PackedChunk
    from ragcompress.kv.fast.paged_engine import PagedFastGenerator

    model, prefix, passages = stored
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pre = PackedChunk.from_prefix(prefix_kv)
    pool = ChunkPool.for_model(model, 256, 4)
    kw = {"capacity": 80, "max_question": 16, "max_new_tokens": 8, "buckets": (16,), "max_batch": 2}
    paged = PagedFastGenerator(model, pool=pool, **kw)
    q = _ids(torch.Generator().manual_seed(5), 7, len(tokenizer))
    pos = paged.load_reusing(pre, chunks)
    want = paged.generate([q], 8)
    placed: list[int] = []
    real = pool.lease_request
    monkeypatch.setattr(pool, "lease_request", lambda items: (placed.append(len(items)), real(items))[1])
    assert paged.load_reusing(pre, chunks) == pos and placed == []
    assert paged.generate([q], 8) == want
    paged.load_reusing(pre, chunks[::-1])
    assert paged.load_reusing(pre, chunks) == pos and len(placed) == 2
    paged.load(pre, chunks)
    assert len(placed) == 3 and paged.generate([q], 8) == want
    paged.release()
    paged.load_reusing(pre, chunks)
    assert len(placed) == 4 and paged.generate([q], 8) == want
    paged.load_batch([(pre, chunks), (pre, chunks[:1])])
    paged.load_reusing(pre, chunks)
    assert len(placed) == 7 and paged.generate([q], 8) == want
