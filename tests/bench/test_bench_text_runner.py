"""The text benchmark end to end on two real questions with a tiny seeded reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ragcompress_bench.text import _parser, build_contenders, run_and_report


def _gen(tokenizer, tiny_llama):
    from ragcompress.generate import Generator

    return Generator.from_model(tiny_llama, tokenizer, max_new_tokens=4)


def _run(tmp_path: Path, names: str, tokenizer, tiny_llama, capsys) -> tuple[str, dict]:
    from ragcompress_bench.data import load

    argv = ["--limit", "2", "--k", "3", "--ratios", "0.5,0.25", "--max-new-tokens", "4",
            "--contenders", names, "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    args = _parser().parse_args(argv)
    examples = load("disflqa", k=3, seed=0, limit=2)
    contenders = build_contenders(names.split(","), [0.5, 0.25])
    assert run_and_report(examples, contenders, _gen(tokenizer, tiny_llama), args, argv) == 0
    table = capsys.readouterr().out
    return table, json.loads((tmp_path / "text.json").read_text())


def test_runner_writes_table_json_png_with_every_row(
    tmp_path, tokenizer, tiny_llama, capsys, monkeypatch
) -> None:
    # llmlingua made unimportable: its rows must say so instead of disappearing
    monkeypatch.setitem(sys.modules, "llmlingua", None)
    table, data = _run(tmp_path, "none,random,LLMLingua,LongLLMLingua", tokenizer, tiny_llama, capsys)
    assert (tmp_path / "text.png").stat().st_size > 0
    assert (tmp_path / "text.md").read_text().endswith(table.strip() + "\n")
    labels = [r["label"] for r in data["contenders"]]
    assert labels == ["none", "random@0.5", "random@0.25", "LLMLingua@0.5", "LLMLingua@0.25",
                      "LongLLMLingua@0.5", "LongLLMLingua@0.25"]  # fmt: skip
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| contender")]
    assert len(lines) == len(labels)
    assert "gold answer survives" in table.splitlines()[0]
    for row in data["contenders"]:
        if row["name"].endswith("LLMLingua"):
            assert "cannot import llmlingua" in row["unavailable"]
    assert sum("did not run: cannot import llmlingua" in ln for ln in lines) == 4
    by = {r["label"]: r for r in data["contenders"]}
    none = by["none"]["summary"]
    assert none["ratio"] == 1.0 and none["survives"] == 1.0 and none["agreement"] == 1.0
    if "unavailable" not in by["random@0.25"]:
        assert by["random@0.25"]["summary"]["ratio"] > by["random@0.5"]["summary"]["ratio"] > 1.0
    assert data["command"].startswith("ragcompress bench text") and data["machine"]["cpus"]
    assert {"llmlingua", "langchain-classic", "transformers"} <= set(data["versions"])
    per = [r for r in data["rows"] if r["contender"] == "none"]
    assert len(per) == 2 and all(r["tokens_after"] == r["tokens_before"] > 0 for r in per)
    assert all(isinstance(r["gold_ll"], float) and r["gold_ll"] <= 0 for r in per)


def test_unknown_contender_name_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown contender"):
        build_contenders(["nope"])


@pytest.mark.slow
def test_embeddings_filter_rows_run_with_the_real_embedder(tmp_path, tokenizer, tiny_llama, capsys) -> None:
    names = "none,EmbeddingsFilter,EmbeddingsFilter (sentences)"
    _, data = _run(tmp_path, names, tokenizer, tiny_llama, capsys)
    by = {r["label"]: r for r in data["contenders"]}
    for name in ("EmbeddingsFilter", "EmbeddingsFilter (sentences)"):
        assert "unavailable" not in by[f"{name}@0.5"], by[f"{name}@0.5"]
        assert by[f"{name}@0.5"]["version"].startswith("langchain-classic ")
        # fewer units kept at the smaller target
        assert by[f"{name}@0.25"]["summary"]["ratio"] >= by[f"{name}@0.5"]["summary"]["ratio"] > 1.0
