"""The dense gather's table cuts long single-run entries (packed chunks, the prefix) to the
length of the stored layers' entries (ragcompress/kv/fast/rows.py, even_entries): every source
row still goes to the same destination row, from the same key and value, with the same delta;
and the interpreted gather kernel over a cut table writes what the torch reference writes."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import FastGenerator, StaticKVBuffer
from ragcompress.kv.fast import rows as rows_mod
from ragcompress.kv.fast.rows import even_entries
from ragcompress.kv.fast.write import gather

from .test_fast_path import _interpreted, gathered, mixed_chunks, setup  # noqa: F401


def _row_map(table: torch.Tensor, head_dim: int) -> set[tuple[int, ...]]:
    """{(key element offset, value element offset, destination row, delta)} of every source row."""
    out = set()
    for k_off, v_off, rows, dst, delta, run, stride in table.tolist():
        for r in range(rows):
            out.add((k_off + r * head_dim, v_off + r * head_dim, dst + (r % run) * stride + r // run, delta))
    return out


def test_cut_entries_move_every_row_where_the_whole_entry_did(monkeypatch):
    monkeypatch.setattr(rows_mod, "EVEN_ROWS", 8)
    d = 4
    table = torch.tensor(
        [
            [0, 5000, 45, 0, 3, 45, 1],  # packed: one run of 45 rows, cut into 24 + 21
            [1000, 6000, 24, 100, -2, 12, 30],  # stored: 2 runs of 12 (never cut; sets the cut: 24)
            [2000, 7000, 7, 900, 0, 7, 1],  # one run shorter than the cut: kept
            [3000, 8000, 30, 1000, 5, 30, 2],  # one run with a stride: 24 + 6
        ]
    )
    got, most = even_entries(table, d)
    assert most == 24 == int(got[:, 2].max()) and got.shape[0] == 2 + 1 + 1 + 2
    assert _row_map(got, d) == _row_map(table, d)
    assert torch.equal(even_entries(table[1:2], d)[0], table[1:2])  # nothing to cut
    single = table[[0, 2, 3]]  # packed entries alone: left as they are
    assert torch.equal(even_entries(single, d)[0], single) and even_entries(single, d)[1] == 45
    wide = torch.tensor([[0, 900, 6, 50, 0, 2, 40]])  # a stored layer shorter than EVEN_ROWS
    got, most = even_entries(torch.cat([single, wide]), d)
    assert most == 8 and got.shape[0] == 6 + 1 + 4 + 1
    assert _row_map(got, d) == _row_map(torch.cat([single, wide]), d)


def test_the_gather_kernel_over_cut_entries_matches_the_reference(setup, monkeypatch):  # noqa: F811
    """Packed, quantized and stored chunks in one request, long entries cut to 8 rows: the
    gather kernels (Triton interpreter) == the torch reference, every slot written."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(rows_mod, "EVEN_ROWS", 8)
    model, _gen, prefix, passages, _q = setup
    kernels = _interpreted("_gather")
    items = mixed_chunks(model, prefix, passages)
    fast = FastGenerator(model, capacity=128, max_question=8, max_new_tokens=4)
    shape = (fast.buffer.layers, fast.buffer.kv_heads, fast.buffer.head_dim)
    got, ref = (StaticKVBuffer(*shape, capacity=128, region=4) for _ in "ab")
    for b in (got, ref):
        b.ctx_keys.fill_(float("nan"))
        b.ctx_values.fill_(float("nan"))
    rows = gathered(got, items)
    table = rows.dense_table()
    entries = len(rows.dense) + sum(len(b.layers) for b in rows.blocks)
    assert table is not None and table[0].shape[0] > entries  # long entries were cut
    gather(rows, fast.rotary, kernels=kernels)
    gather(gathered(ref, items), fast.rotary)
    n = ref.ctx_len
    for x, y in ((got.ctx_keys, ref.ctx_keys), (got.ctx_values, ref.ctx_values)):
        assert not x[:n].isnan().any() and x[n:].isnan().all()
        torch.testing.assert_close(x[:n], y[:n], atol=2e-5, rtol=1e-5)
