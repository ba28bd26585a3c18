"""The pool's lease and the block table's publishing (ragcompress/kv/fast/pool.py, paged.py):
a keyed hit of an object already checked is not checked again, and a table written after a
longer one reads only its own rows. The paged engine end to end: tests/kv/test_fast_paged.py."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast.paged import BlockTable, paged_context_reference
from ragcompress.kv.fast.pool import ChunkPool, block_runs
from tests.conftest import make_tiny_llama

from .test_fast_paged import _chunk
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
