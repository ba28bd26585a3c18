"""Paired bootstrap intervals of ``bench fidelity``'s rows: degenerate cases are exact, a real
gap gives an interval that excludes no-difference, noise gives one that straddles it."""

from __future__ import annotations

from typing import Any

import pytest
from ragcompress_bench.fidelity_ci import paired_intervals
from ragcompress_bench.fidelity_report import summarize


def _rec(i: int, right: bool, ll: float, contender: str) -> dict[str, Any]:
    return {
        "dataset": "twohop-k5", "example": f"twohop:{i}", "contender": contender,
        "answers": [f"Gold{i}"], "text": f"It is Gold{i}." if right else "It is Other.",
        "gold_ll": ll, "next_token_agree": 1.0, "ttft_ms": 1.0, "recompute": 0.0,
    }  # fmt: skip


def _full(n: int) -> dict[tuple[str, str], dict[str, Any]]:
    recs = [_rec(i, i % 2 == 0, -1.0, "full prefill") for i in range(n)]
    return {(r["dataset"], r["example"]): r for r in recs}


def test_a_contender_equal_to_the_full_prefill_has_a_point_interval() -> None:
    full = _full(30)
    same = [dict(r, contender="chunks") for r in full.values()]
    ci = paired_intervals(same, full)
    assert ci["f1_ratio_ci"] == pytest.approx([1.0, 1.0])
    assert ci["gold_in_ratio_ci"] == pytest.approx([1.0, 1.0])
    assert ci["delta_ll_ci"] == pytest.approx([0.0, 0.0])


def test_a_real_loss_excludes_one_and_noise_straddles_it() -> None:
    full = _full(60)
    # right on none of the questions the full prefill gets: the ratio is 0 in every draw
    lost = [_rec(i, False, -1.5, "chunks") for i in range(60)]
    ci = paired_intervals(lost, full)
    assert ci["gold_in_ratio_ci"] == pytest.approx([0.0, 0.0])
    assert ci["delta_ll_ci"] == pytest.approx([-0.5, -0.5])
    # one question lost and one gained: the estimate is 1 and the interval holds it, and more
    flips = [(i % 2 == 0) != (i in (0, 1)) for i in range(60)]
    swapped = [_rec(i, flips[i], -1.0 + (0.1 if i % 3 else -0.1), "x") for i in range(60)]
    lo, hi = paired_intervals(swapped, full)["gold_in_ratio_ci"]
    assert lo < 1.0 < hi and hi - lo > 0.05
    lo, hi = paired_intervals(swapped, full)["delta_ll_ci"]
    assert lo < 0.0333 < hi  # the mean difference (40 × +0.1, 20 × −0.1) / 60


def test_too_few_or_unscored_questions_give_no_interval() -> None:
    full = _full(1)
    assert paired_intervals([dict(r, contender="c") for r in full.values()], full) == {
        "f1_ratio_ci": None, "gold_in_ratio_ci": None, "delta_ll_ci": None,
    }  # fmt: skip
    wrong = {k: dict(r, text="It is Other.") for k, r in _full(20).items()}  # full never right
    ci = paired_intervals([dict(r, contender="c") for r in wrong.values()], wrong)
    assert ci["gold_in_ratio_ci"] is None and ci["delta_ll_ci"] == pytest.approx([0.0, 0.0])


def test_summary_rows_carry_the_intervals_and_the_reference_row_none() -> None:
    full = list(_full(20).values())
    other = [_rec(i, True, -0.9, "chunks") for i in range(20)]
    rows = summarize(full + other, ["chunks"], ["twohop-k5"], {}, {})
    by = {r["contender"]: r for r in rows if r["dataset"] == "all"}
    assert by["full prefill"]["f1_ratio_ci"] is None
    lo, hi = by["chunks"]["gold_in_ratio_ci"]
    assert lo <= by["chunks"]["gold_in_ratio"] <= hi and lo > 1.0  # right everywhere vs half


def test_report_only_rebuilds_the_tables_from_the_questions(tmp_path) -> None:
    """``--report-only`` loads no reader: the rows are summarized again from fidelity.json's
    questions (an old file's rows lack the interval columns) and the measuring machine stays."""
    import json

    from ragcompress_bench.fidelity import main
    from ragcompress_bench.fidelity_report import write_reports

    records = list(_full(12).values()) + [_rec(i, i < 3, -1.2, "chunks") for i in range(12)]
    rows = summarize(records, ["chunks", "ape"], ["twohop-k5"], {"ape": "needs a hook"}, {})
    for r in rows:
        for key in ("f1_ratio_ci", "gold_in_ratio_ci", "delta_ll_ci"):
            r.pop(key, None)  # as written before the intervals existed
    payload = {
        "command": "ragcompress bench fidelity --limit 12", "date": "2026-12-01", "reader": "tiny",
        "dtype": "float32", "device": "cpu", "limit": 12, "k": [5], "datasets": ["twohop-k5"],
        "contenders": {"full prefill": {}, "chunks": {}, "ape": {}}, "max_new_tokens": 8, "seed": 0,
        "wall_s": 1.0, "rows": rows, "questions": records, "machine": {"cpus": 999},
    }  # fmt: skip
    write_reports(tmp_path, payload)
    (tmp_path / "fidelity.md").unlink()
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "fidelity.json").read_text())
    assert again["machine"] == {"cpus": 999} and again["questions"] == records
    chunks = next(r for r in again["rows"] if r["contender"] == "chunks" and r["dataset"] == "all")
    assert chunks["gold_in_ratio"] == pytest.approx(0.5) and len(chunks["gold_in_ratio_ci"]) == 2
    assert next(r for r in again["rows"] if r["contender"] == "ape")["unavailable"] == "needs a hook"
    assert "95% CI" in (tmp_path / "fidelity.md").read_text()
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--report-only", "--out", str(tmp_path / "missing")])
