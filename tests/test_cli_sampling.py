"""`ragcompress ask` with sampling flags, streamed output and the KV path's compression lines
(the tiny random reader saved as a checkpoint folder; the packaged embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragcompress.cli.app import main
from tests.support.tiny import write_docs


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_docs(tmp_path_factory.mktemp("cli-sampling")))


def _ask(capsys: pytest.CaptureFixture[str], docs: str, tiny: str, *flags: str) -> str:
    argv = ["ask", "Where does the Rhine flow?", "--docs", docs, "--reader", tiny, "--max-new-tokens", "6"]
    assert main([*argv, "--compressor", "none", *flags]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_ask_samples_reproducibly_and_streams(
    capsys: pytest.CaptureFixture[str], docs: str, tiny_model_dir: str
) -> None:
    flags = ("--temperature", "0.7", "--seed", "1")
    first = json.loads(_ask(capsys, docs, tiny_model_dir, *flags, "--json"))
    again = json.loads(_ask(capsys, docs, tiny_model_dir, *flags, "--json"))
    assert first["answer"] == again["answer"] and first["new_tokens"] > 0
    greedy = json.loads(_ask(capsys, docs, tiny_model_dir, "--json"))
    assert greedy["answer"] != first["answer"]  # the tiny reader's sampled answer is not its greedy one
    streamed = _ask(capsys, docs, tiny_model_dir, *flags)
    whole = _ask(capsys, docs, tiny_model_dir, *flags, "--no-stream")
    answer = first["answer"].replace("\n", "\n           ")
    assert f"  answer : {answer}\n" in streamed
    assert streamed.splitlines()[:2] == whole.splitlines()[:2]  # the same question and answer lines


def test_ask_stop_string_trims_the_answer(
    capsys: pytest.CaptureFixture[str], docs: str, tiny_model_dir: str
) -> None:
    greedy = json.loads(_ask(capsys, docs, tiny_model_dir, "--json"))["answer"]
    stop = greedy[4:7]
    got = json.loads(_ask(capsys, docs, tiny_model_dir, "--json", "--stop", stop, "--stop", "\\n\\n"))
    assert got["answer"] == greedy[: greedy.index(stop)].strip()


def test_ask_kv_shows_context_tokens_and_bytes(
    capsys: pytest.CaptureFixture[str], docs: str, tiny_model_dir: str, tmp_path: Path
) -> None:
    press = '[{"name": "knorm", "ratio": 0.5}, {"name": "quantize", "bits": 4}]'
    out = _ask(capsys, docs, tiny_model_dir, "--kv", "--press", press, "--cache-dir", str(tmp_path))
    kv = next(line for line in out.splitlines() if line.startswith("  kv     : "))
    full, kept = (int(n) for n in kv.split(":")[1].split("context")[0].split("→"))
    assert kept < full and "stored vs" in kv and "fp16" in kv


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--top-k", "-2"], "--top-k must be >= 0"),
        (["--stop", ""], "--stop: stop strings must be non-empty"),
    ],
)
def test_bad_sampling_flags_exit_2_before_loading_models(
    capsys: pytest.CaptureFixture[str], docs: str, flags: list[str], message: str
) -> None:
    argv = ["ask", "Who?", "--docs", docs, "--reader", "/nonexistent/model", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "loading pipeline" not in err


def test_ask_kv_from_an_int4_paged_pool_answers_as_the_eager_path(
    capsys: pytest.CaptureFixture[str], docs: str, tiny_model_dir: str
) -> None:
    """``--fast-capacity --fast-placement`` end to end from the CLI: int4 chunks in the pool's
    grouping (8 = one block = half the tiny reader's heads) read in place from an int4 paged
    pool give the answer of the eager KV path over the same chunks."""
    press = '[{"name": "knorm", "ratio": 0.5}, {"name": "quantize", "bits": 4, "group_size": 8}]'
    eager = json.loads(_ask(capsys, docs, tiny_model_dir, "--kv", "--press", press, "--json"))
    placement = '{"name": "paged", "pool_tokens": 4096, "block_size": 8, "storage": "int4"}'
    fast = ("--fast-capacity", "1024", "--fast-placement", placement)
    got = json.loads(_ask(capsys, docs, tiny_model_dir, "--kv", "--press", press, *fast, "--json"))
    assert got["answer"] == eager["answer"] and got["new_tokens"] == eager["new_tokens"] > 0
    assert got["engine"] == "fast" and eager.get("engine") != "fast"


def test_demo_answers_a_ragged_batch_as_one_by_one(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: str
) -> None:
    """``demo --fast-batch 2`` on the paged placement: three bundled questions, each over its
    own retrieved passages, in ragged steps of two, answer as the same demo one by one; sampling
    flags are refused with it."""
    base = ["demo", "--kv", "--reader", tiny_model_dir, "--limit", "3", "--max-new-tokens", "5", "--json"]
    fast = [*base, "--fast-capacity", "2048", "--fast-placement", '{"name": "paged", "block_size": 16}']
    assert main(fast) == 0, capsys.readouterr().err
    alone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*fast, "--fast-batch", "2"]) == 0, capsys.readouterr().err
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["answer"] for r in got] == [r["answer"] for r in alone] and len(got) == 3
    assert [r["batch"] for r in got] == [2, 2, 1] and [r["id"] for r in got] == [r["id"] for r in alone]
    assert main([*fast, "--fast-batch", "2", "--temperature", "0.5"]) == 2
    assert "answers greedily" in capsys.readouterr().err
