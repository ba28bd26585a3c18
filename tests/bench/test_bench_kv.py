"""The KV benchmark end to end on real questions with a tiny seeded reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ragcompress_bench.kv import _parser, build_contenders, run_and_report
from ragcompress_bench.kv_contenders import KVSession


def _run(
    tmp_path: Path, tokenizer, tiny_llama, capsys, contenders: str, calibration: int = 0
) -> tuple[str, dict]:
    from ragcompress_bench.data import load

    from ragcompress.generate import Generator

    argv = ["--limit", "2", "--k", "2", "--ratios", "0.5", "--max-new-tokens", "3",
            "--calibration", str(calibration), "--contenders", contenders,
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    args = _parser().parse_args(argv)
    examples = load("disflqa", k=2, seed=0, limit=2 + calibration)
    session = KVSession(Generator.from_model(tiny_llama, tokenizer, max_new_tokens=3))
    assert run_and_report(examples[:2], examples[2:], session, args, argv) == 0
    return capsys.readouterr().out, json.loads((tmp_path / "kv.json").read_text())


def test_bench_kv_writes_table_json_png_and_baselines_agree_with_themselves(
    tmp_path, tokenizer, tiny_llama, capsys
) -> None:
    table, data = _run(tmp_path, tokenizer, tiny_llama, capsys, "chunks (no press),knorm 0.5 + int4,int4")
    assert (tmp_path / "kv.png").stat().st_size > 0 and (
        tmp_path / "kv.md"
    ).read_text().strip() == table.strip()
    by = {s["contender"]: s for s in data["summary"]}
    # the full-prefill baseline is always run: the agreement columns are measured against it
    assert list(by) == ["full prefill", "chunks (no press)", "int4", "knorm 0.5 + int4"]
    full, chunks = by["full prefill"], by["chunks (no press)"]
    assert full["agree_full"] == 1.0 and full["delta_ll"] == 0.0 and chunks["agree_chunks"] == 1.0
    # next-token agreement is measured along the uncompressed chunks' own greedy answer
    assert chunks["token_agree"] == 1.0 and all(0.0 <= s["token_agree"] <= 1.0 for s in by.values())
    # the tiny reader is fp32: uncompressed = 2x fp16; presses store less, a chain less than either
    assert full["bytes_frac"] == pytest.approx(2.0) and chunks["bytes_frac"] == pytest.approx(
        2.0, rel=0.1
    )  # + positions
    assert by["knorm 0.5 + int4"]["bytes_frac"] < by["int4"]["bytes_frac"] < 0.5
    assert all(s["n"] == 2 and s["gold_ll"] <= 0 for s in data["summary"])
    assert data["command"].startswith("ragcompress bench kv") and "kvpress" in data["versions"]
    assert len(data["rows"]) == 8 and all(r["context_tokens"] > 0 for r in data["rows"])


def test_bench_kv_lowrank_rows_use_a_basis_fitted_on_other_questions(
    tmp_path, tokenizer, tiny_llama, capsys
) -> None:
    _, data = _run(tmp_path, tokenizer, tiny_llama, capsys, "lowrank K r8", calibration=2)
    lowrank = next(s for s in data["summary"] if s["contender"] == "lowrank K r8")  # tiny reader: head_dim 16
    assert "unavailable" not in lowrank and lowrank["n"] == 2


def test_kvpress_anchor_runs_on_the_same_reader(tmp_path, tokenizer, tiny_llama, capsys) -> None:
    _, data = _run(tmp_path, tokenizer, tiny_llama, capsys, "kvpress Knorm 0.5,kvpress SnapKV 0.5")
    by = {s["contender"]: s for s in data["summary"]}
    for label in ("kvpress Knorm 0.5", "kvpress SnapKV 0.5"):
        assert "unavailable" not in by[label], by[label]
        # half the tokens of an fp32 cache: 1.0 of the fp16 bytes of the whole context
        assert by[label]["n"] == 2 and by[label]["bytes_frac"] == pytest.approx(1.0, abs=0.05)
        assert by[label]["version"].startswith("kvpress ")


def test_bench_kv_says_why_kvpress_rows_did_not_run(
    tmp_path, tokenizer, tiny_llama, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "kvpress", None)
    table, data = _run(tmp_path, tokenizer, tiny_llama, capsys, "kvpress Knorm 0.5")
    row = next(s for s in data["summary"] if s["contender"] == "kvpress Knorm 0.5")
    assert "cannot import kvpress" in row["unavailable"]
    assert "cannot import kvpress" in next(
        ln for ln in table.splitlines() if ln.startswith("| kvpress Knorm")
    )


def test_bench_kv_on_gemma3_runs_ours_and_says_why_kvpress_does_not(tmp_path, tokenizer, capsys) -> None:
    """kvpress presses Gemma 3's local layers too, and transformers' window masks then fail on a
    shape mismatch: the row says so in one line instead of a shape error per question."""
    from tests.support.tiny import make_tiny_gemma3

    gemma = make_tiny_gemma3(len(tokenizer), seed=2)
    table, data = _run(tmp_path, tokenizer, gemma, capsys, "knorm 0.5,kvpress Knorm 0.5")
    by = {s["contender"]: s for s in data["summary"]}
    assert "unavailable" not in by["knorm 0.5"] and by["knorm 0.5"]["n"] == 2
    assert "does not run gemma3" in by["kvpress Knorm 0.5"]["unavailable"]
    assert "does not run gemma3" in next(ln for ln in table.splitlines() if ln.startswith("| kvpress Knorm"))


def test_line_up_has_ours_and_anchors_at_every_ratio() -> None:
    labels = [c.label for c in build_contenders((0.25, 0.5), basis="b.safetensors")]
    for r in (0.25, 0.5):
        for name in (
            "knorm",
            "window",
            "observed",
            "kvpress Knorm",
            "kvpress SnapKV",
            "kvpress StreamingLLM",
        ):
            assert f"{name} {r}" in labels
    assert "lowrank KV r32" in labels and "lowrank K r32" not in [
        c.label for c in build_contenders((0.5,), None)
    ]


def test_unknown_contender_is_a_clear_error(tmp_path, tokenizer, tiny_llama, capsys) -> None:
    with pytest.raises(SystemExit, match="unknown contender"):
        _run(tmp_path, tokenizer, tiny_llama, capsys, "knorm 0.99")


def test_scores_evicted_chunks_of_a_local_window_family_as_the_kv_path_serves_them(tokenizer) -> None:
    """Gemma 3's local layers see keys by logical position: after eviction the chunks' slots have
    gaps, so the model's own mask (by slot) would let a local layer see past its window. The
    benchmark scores the context with the assembly's masks, as the eager KV path answers: same
    teacher-forced log-probabilities, same greedy tokens (the window, 30, is shorter than the
    context and longer than the evicted tail, so a mask by slot would differ)."""
    import torch
    from ragcompress_bench.kv import greedy, score
    from ragcompress_bench.kv import teacher_forced as bench_teacher_forced
    from ragcompress_bench.kv_contenders import Chunks

    from ragcompress.generate import Generator
    from ragcompress.kv.context import generate_from_chunks, prepare_context, teacher_forced
    from ragcompress.kv.presses import KnormPress
    from tests.support.tiny import make_tiny_gemma3

    passages = [
        "The Eiffel Tower is 330 metres tall and was finished in 1889.",
        "Bananas are berries, botanically speaking, while strawberries are not.",
        "Mount Kilimanjaro in Tanzania is the highest mountain in Africa.",
    ]
    question = "How tall is the Eiffel Tower?"
    model = make_tiny_gemma3(len(tokenizer), seed=2, sliding_window=30)
    gen = Generator.from_model(model, tokenizer, max_new_tokens=6)
    session = KVSession(gen)
    ctx, frac = Chunks("knorm 0.5", spec={"name": "knorm", "ratio": 0.5}).context(session, passages)
    assert ctx.cache.get_seq_length() < ctx.position and frac < 1.5  # evicted: slots have gaps
    q = gen.layout.question_ids(question)
    answer = list(tokenizer(" 330 metres tall", add_special_tokens=False)["input_ids"])
    chunks = session.encoder.encode(passages, [KnormPress(ratio=0.5)])
    want = teacher_forced(model, prepare_context(model, gen.layout, chunks, q), q, [*answer, 0])
    got = bench_teacher_forced(session, ctx.cache, ctx.position, q, answer, ctx.step_kwargs)
    torch.testing.assert_close(got, want[: len(answer)], atol=1e-5, rtol=0)
    served = generate_from_chunks(gen, question, chunks).token_ids
    assert list(greedy(session, ctx, q).token_ids) == list(served)
    r = score(session, ctx, question, " 330 metres tall")
    assert r["tokens"] == list(served) and r["token_agree"] == 1.0


def test_reader_dtype_is_an_option_of_bench_kv_and_bench_text() -> None:
    from ragcompress_bench.text import _parser as text_parser

    for parser in (_parser(), text_parser()):
        assert parser.parse_args([]).dtype == "auto"  # fp32 on CPU: earlier tables stay comparable
        assert parser.parse_args(["--dtype", "bfloat16"]).dtype == "bfloat16"
        with pytest.raises(SystemExit):
            parser.parse_args(["--dtype", "int3"])
