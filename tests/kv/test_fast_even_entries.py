"""The dense gather's table cuts long single-run entries (packed chunks, the prefix) to the
length of the stored layers' entries (ragcompress/kv/fast/rows.py, even_entries): every source
row still goes to the same destination row, from the same key and value, with the same delta.
The interpreted gather kernel over a cut table: tests/kv/test_fast_path.py."""

from __future__ import annotations

import torch

from ragcompress.kv.fast import rows as rows_mod
from ragcompress.kv.fast.rows import even_entries


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
