"""The pool's lease and the block table's publishing (ragcompress/kv/fast/pool.py, paged.py):
a keyed hit of an object already checked is not checked again, and a table written after a
longer one reads only its own rows. The paged engine end to end: tests/kv/test_fast_paged.py."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast.paged import BlockTable, paged_context_reference
from ragcompress.kv.fast.pool import ChunkPool
from tests.conftest import make_tiny_llama

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
