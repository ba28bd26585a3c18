"""``bench fidelity`` end to end with a tiny seeded reader saved to disk, and its two-hop set."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from ragcompress_bench.data import load
from ragcompress_bench.data.twohop import HOPS_IN_ORDER, HOPS_REVERSED
from ragcompress_bench.fidelity import COMPRESSED, main, parse_contenders

_REQUIRED = ("contender", "dataset", "f1", "f1_vs_full", "agree_full", "delta_ll", "recompute")


@pytest.fixture(scope="module")
def tiny_reader_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> str:
    from tests.support.tiny import make_tiny_llama

    out = tmp_path_factory.mktemp("tiny-reader")
    # QuAC's passages are long: 5 of them need more than the default 4096 positions
    make_tiny_llama(len(tokenizer), max_position_embeddings=16384).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_runs_every_dataset_family_and_full_prefill_matches_itself(
    tmp_path: Path, tiny_reader_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--reader", tiny_reader_dir, "--dtype", "float32", "--limit", "2", "--k", "5",
            "--datasets", "disflqa,quac,narrativeqa,twohop", "--contenders", "chunks,chunks+kvzip,blend:0.15",
            "--max-new-tokens", "4", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((tmp_path / "fidelity.json").read_text())
    assert (tmp_path / "fidelity.md").read_text().strip() == capsys.readouterr().out.strip()
    assert (tmp_path / "fidelity.png").stat().st_size > 0
    assert data["dtype"] == "float32" and data["device"] == "cpu" and data["k"] == [5] and data["limit"] == 2
    assert data["command"].startswith("ragcompress bench fidelity") and data["date"]
    by = {(r["contender"], r["dataset"]): r for r in data["rows"]}
    assert all(key in r for r in data["rows"] for key in _REQUIRED)
    for ds in ("all", "qa-k5", "disflqa-k5", "quac-k5", "narrativeqa-k5", "twohop-k5"):
        full = by["full prefill", ds]
        assert full["n"] == (8 if ds == "all" else 6 if ds == "qa-k5" else 2), full.get("errors")
        assert full["f1_vs_full"] == 1.0 and full["agree_full"] == 1.0 and full["delta_ll"] == 0.0
        assert full["next_token_agree"] == 1.0 and full["recompute"] == 1.0
        for label in ("chunks", "chunks+kvzip"):
            row = by[label, ds]
            assert row["n"] == full["n"] and row["recompute"] == 0.0
            assert 0.0 <= row["next_token_agree"] <= 1.0 and row["gold_ll"] <= 0.0 and row["ttft_ms"] > 0
    # the compressed chunks read a different context: the gold answer's likelihood moves
    assert by["chunks+kvzip", "all"]["delta_ll"] != by["chunks", "all"]["delta_ll"]
    blend = by["blend:0.15", "all"]
    # before assembly modes exist in this build, the row says why it did not run
    assert "ragcompress.kv.assembly" in blend.get("unavailable", "") or (
        blend["n"] == 8 and 0.0 < blend["recompute"] < 1.0
    )
    assert {q["dataset"] for q in data["questions"]} == {
        f"{d}-k5" for d in ("disflqa", "quac", "narrativeqa", "twohop")
    }
    # the two-hop set's rows split by whether the first hop's passage precedes the bridge's
    subsets = [ds for _, ds in by if ds.startswith("twohop-k5/")]
    assert subsets and all(ds.rpartition("/")[2] in (HOPS_IN_ORDER, HOPS_REVERSED) for ds in subsets)
    assert sum(by["full prefill", ds]["n"] for ds in set(subsets)) == 2
    for r in data["rows"]:
        assert r["n"] == 0 or 0.0 <= r["gold_in"] <= 1.0
        if r["contender"] == "full prefill" and r["gold_in"]:
            assert r["gold_in_ratio"] == 1.0


def test_one_passage_chunks_read_the_same_prompt_as_the_full_prefill(
    tmp_path: Path, tiny_reader_dir: str
) -> None:
    # a single chunk reproduces a fresh prefill, so a harness that feeds both the same prompt
    # must find the same answers and likelihoods (fp32: equal up to rounding)
    argv = ["--reader", tiny_reader_dir, "--dtype", "float32", "--limit", "2", "--k", "1",
            "--datasets", "disflqa", "--contenders", "chunks", "--max-new-tokens", "6",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((tmp_path / "fidelity.json").read_text())["rows"]
    chunks = next(r for r in rows if r["contender"] == "chunks" and r["dataset"] == "all")
    assert chunks["n"] == 2 and chunks["agree_full"] == 1.0 and chunks["next_token_agree"] == 1.0
    assert chunks["delta_ll"] == pytest.approx(0.0, abs=1e-4)
    assert chunks["kl_full"] == pytest.approx(0.0, abs=1e-4)


def test_kl_column_and_a_resumed_journal_gets_it_without_new_answers(
    tmp_path: Path, tiny_reader_dir: str
) -> None:
    """Several chunks read another context than the full prefill: KL > 0 (the full prefill's own
    is 0). A journal written before the column existed is completed by --resume: the answers
    stay as journaled, only the KL is added."""
    argv = ["--reader", tiny_reader_dir, "--dtype", "float32", "--limit", "2", "--k", "5",
            "--datasets", "twohop", "--contenders", "chunks", "--max-new-tokens", "4",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    by = {r["contender"]: r for r in json.loads((tmp_path / "fidelity.json").read_text())["rows"]}
    assert by["full prefill"]["kl_full"] == 0.0 and by["chunks"]["kl_full"] > 1e-4
    journal = tmp_path / "questions.jsonl"
    old = [json.loads(line) for line in journal.read_text().splitlines()]
    for r in old:
        r.pop("kl_full"), r.pop("ref_top", None)
        r["text"] = "journaled " + r["text"]  # a marker: resumed rows must keep what was journaled
    journal.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert main([*argv, "--resume"]) == 0
    again = {r["contender"]: r for r in json.loads((tmp_path / "fidelity.json").read_text())["rows"]}
    assert again["chunks"]["kl_full"] == pytest.approx(by["chunks"]["kl_full"], rel=1e-4, abs=1e-6)
    questions = json.loads((tmp_path / "fidelity.json").read_text())["questions"]
    assert questions and all(q["text"].startswith("journaled ") for q in questions)


def test_contender_list_parsing() -> None:
    line = parse_contenders("chunks, concat ,blend:0.3+kvzip,ape,blend,blend_question:0.2")
    assert [c.label for c in line] == [
        "full prefill",
        "chunks",
        "blend:0.3+kvzip",
        "ape",
        "blend:0.15",
        "blend_question:0.2",
    ]
    assert line[5].assembly == {"name": "blend_question", "recompute": 0.2}
    assert line[0].assembly is None and line[1].assembly == {"name": "concat"} and not line[1].presses
    assert line[2].assembly == {"name": "blend", "recompute": 0.3} and line[2].presses == COMPRESSED
    drafted = parse_contenders("blend_question:0.15/draft_tokens=4/last_tokens=none+kvzip")[1]
    assert drafted.label == "blend_question:0.15/draft_tokens=4/last_tokens=none+kvzip"
    spec = {"name": "blend_question", "recompute": 0.15, "draft_tokens": 4, "last_tokens": None}
    assert drafted.assembly == spec
    assert drafted.presses == COMPRESSED
    labels = [c.label for c in parse_contenders("")]
    assert labels[:3] == ["full prefill", "chunks", "chunks+kvzip"] and len(labels) == 11
    assert {"blend:0.05", "blend:0.15", "blend:0.3+kvzip", "ape+kvzip"} <= set(labels)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("lingua", "unknown mode 'lingua'"), ("blend:1.5", "must be in [0, 1]"), ("blend:x", "not a number"),
     ("ape:0.1", "(blend, blend_question, blend_link) take a recompute share"), ("chunks+int8", "'+kvzip'"),
     ("blend_question/draft_tokens=-1", "draft_tokens"), ("blend/drafts=2", "drafts"),
     ("blend_question/draft_tokens", "not FIELD=VALUE"), ("blend_question/draft_tokens=x", "not a number")],
)  # fmt: skip
def test_bad_contenders_are_clear_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_contenders(text)


def test_missing_reader_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGCOMPRESS_HOME", str(tmp_path))  # an empty model cache: nothing fetched
    with pytest.raises(SystemExit, match=re.escape("ragcompress models fetch qwen2.5-coder-1.5b-instruct")):
        main(["--limit", "1", "--datasets", "twohop", "--out", str(tmp_path)])
    missing = str(tmp_path / "no-such-reader")
    with pytest.raises(SystemExit, match=re.escape(repr(missing))):
        main(["--reader", missing, "--limit", "1", "--datasets", "twohop", "--out", str(tmp_path)])
    assert not (tmp_path / "fidelity.json").exists()


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


@pytest.mark.parametrize("k", [2, 5, 10])
def test_twohop_needs_both_passages(k: int) -> None:
    examples = load("twohop", k=k, seed=3, limit=6)
    assert examples == load("twohop", k=k, seed=3, limit=6)  # deterministic
    assert examples != load("twohop", k=k, seed=4, limit=6)
    for ex in examples:
        assert len(ex.passages) == k and len({p.id for p in ex.passages}) == k
        first_id, bridge_id = ex.metadata["hops"]
        assert bridge_id == ex.gold_passage_id
        person, place, answer = ex.metadata["person"], ex.metadata["place"], ex.answers[0]
        assert _mentions(ex.question, person) and not _mentions(ex.question, answer)
        # the answer is in the bridge only, the person in the first hop only: one passage never
        # holds both, and the place links them
        assert [p.id for p in ex.passages if _mentions(p.text, answer)] == [bridge_id]
        assert [p.id for p in ex.passages if _mentions(p.text, person)] == [first_id]
        assert {p.id for p in ex.passages if _mentions(p.text, place)} == {first_id, bridge_id}
        ids = [p.id for p in ex.passages]
        in_order = ids.index(first_id) < ids.index(bridge_id)
        assert ex.metadata["subset"] == (HOPS_IN_ORDER if in_order else HOPS_REVERSED)
    if k >= 5:
        # other answers of the same kind are on offer, so the first hop cannot be skipped
        ex = examples[0]
        suffix = ex.answers[0].split()[-1]
        assert sum(suffix in p.text for p in ex.passages) >= 2


def test_full_path_shared_prefill_equals_separate_passes(tiny_reader_dir: str) -> None:
    import torch
    from ragcompress_bench.fidelity_paths import FullPath

    from ragcompress.generate import Generator

    path = FullPath(Generator(model=tiny_reader_dir, dtype="float32", max_new_tokens=4))
    passages, question = ["The Rhine rises in the Alps.", "It flows to the North Sea."], "Where does it flow?"
    targets = [[11, 12, 13, 14], [7], []]
    many = path.logprobs_many(question, passages, targets)
    for target, got in zip(targets, many, strict=True):
        want = path.logprobs(question, passages, target)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_resume_keeps_journaled_questions_and_reruns_a_cut_one(tmp_path: Path, tiny_reader_dir: str) -> None:
    argv = ["--reader", tiny_reader_dir, "--dtype", "float32", "--limit", "2", "--k", "2",
            "--datasets", "twohop", "--contenders", "chunks", "--max-new-tokens", "3",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    journal = tmp_path / "questions.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 4  # 2 questions x (full, chunks)
    first = json.loads((tmp_path / "fidelity.json").read_text())["questions"]
    # a run stopped mid-write: the second question's chunks record is cut short
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2] + "\n")
    kept = json.loads(lines[0])
    kept["text"] = "MARKER kept from the journal"
    journal.write_text(json.dumps(kept) + "\n" + journal.read_text().split("\n", 1)[1])
    assert main([*argv, "--resume"]) == 0
    again = json.loads((tmp_path / "fidelity.json").read_text())["questions"]
    assert len(again) == len(first) == 4
    assert any(r["text"] == "MARKER kept from the journal" for r in again)  # not run again
    by = {(r["example"], r["contender"]): r["tokens"] for r in again}
    assert by == {(r["example"], r["contender"]): r["tokens"] for r in first}  # the cut one ran again
    assert main(argv) == 0  # without --resume the journal starts over
    assert not any(
        r["text"].startswith("MARKER")
        for r in json.loads((tmp_path / "fidelity.json").read_text())["questions"]
    )


def test_resume_measures_again_a_record_of_another_spec(tmp_path: Path, tiny_reader_dir: str) -> None:
    """A label whose spec changed (a mode's default did) is not reused from the journal; a record
    without a spec (an older journal) is."""
    argv = ["--reader", tiny_reader_dir, "--dtype", "float32", "--limit", "1", "--k", "2",
            "--datasets", "twohop", "--contenders", "blend_question:0.5", "--max-new-tokens", "3",
            "--out", str(tmp_path), "--no-progress", "--resume"]  # fmt: skip
    assert main(argv) == 0
    journal = tmp_path / "questions.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    mode = next(r for r in records if r["contender"] == "blend_question:0.5")
    assert mode["spec"]["assembly"]["draft_tokens"] == 0  # resolved: every default written down
    old, legacy = dict(mode), dict(records[0])
    old["spec"] = {**mode["spec"], "assembly": {**mode["spec"]["assembly"], "draft_tokens": 4}}
    old["text"] = legacy["text"] = "MARKER journaled"
    del legacy["spec"]
    journal.write_text(json.dumps(legacy) + "\n" + json.dumps(old) + "\n")
    assert main(argv) == 0
    again = {r["contender"]: r for r in json.loads((tmp_path / "fidelity.json").read_text())["questions"]}
    assert again["full prefill"]["text"] == "MARKER journaled"  # no spec: taken as is
    assert again["blend_question:0.5"]["text"] != "MARKER journaled"  # another spec: measured again
    assert again["blend_question:0.5"]["spec"] == mode["spec"]


@pytest.mark.parametrize("assembly", [{"name": "concat"}, {"name": "blend", "recompute": 0.3}])
def test_kv_path_shared_context_equals_separate_passes(
    tiny_reader_dir: str, assembly: dict[str, Any]
) -> None:
    import torch
    from ragcompress_bench.fidelity_paths import FidelityContender, kv_path

    from ragcompress.generate import Generator

    gen = Generator(model=tiny_reader_dir, dtype="float32", max_new_tokens=4)
    path = kv_path(gen, FidelityContender("x", assembly))
    passages, question = ["The Rhine rises in the Alps.", "It flows to the North Sea."], "Where does it flow?"
    targets = [[11, 12, 13], [7]]
    for target, got in zip(targets, path.logprobs_many(question, passages, targets), strict=True):
        torch.testing.assert_close(got, path.logprobs(question, passages, target), atol=1e-4, rtol=1e-4)
