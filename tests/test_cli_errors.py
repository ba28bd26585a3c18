"""The CLI turns every expected error (store, value, OS, argument) into one line on stderr and
exit status 2, never a traceback; `index` repairs damaged chunks (issue #13, item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragcompress.cli.app import main
from tests.support.tiny import write_docs

SECRET = "hunter2-s3cret"
DEBUG_ENV = "RAGCOMPRESS_DEBUG"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def _fails_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    assert errors[0].startswith(f"ragcompress {argv[0]}: error: ")
    assert message in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # a store URL refused (ValueError from open_store, after the reader loads)
        (["demo", "--kv", "--store", "file://chunks/sub", "--reader", "{tiny}"], "names the host 'chunks'"),
        (["index", "{docs}", "--store", "file://chunks/sub", "--model", "{tiny}"], "names the host 'chunks'"),
        # an OS error: the cache directory is a file
        (
            ["ask", "Who?", "--docs", "{docs}", "--kv", "--cache-dir", "{docs}/a.txt", "--reader", "{tiny}"],
            "a.txt",
        ),
        # an unreachable store, its password never printed
        (
            [
                "index",
                "{docs}",
                "--store",
                f"redis://:{SECRET}@127.0.0.1:1/0?password={SECRET}",
                "--model",
                "{tiny}",
            ],
            "unavailable",
        ),
        (["index", "{docs}", "--store", "{tmp}/chunks", "--tenant", "acme\n", "--model", "{tiny}"], "tenant"),
        # arguments: a negative length, two stores, a benchmark's own argument check
        (["demo", "--max-new-tokens", "-1"], "--max-new-tokens: out of range: must be >= 0, got -1"),
        (["ask", "Who?", "--docs", "{docs}", "--max-new-tokens", "-5"], "--max-new-tokens: out of range"),
        (["demo", "--kv", "--store", "memory://", "--cache-dir", "{tmp}/c"], "not both"),
        (["demo", "--kv", "--fast-capacity", "0"], "--fast-capacity: out of range: must be >= 1"),
        (["demo", "--kv", "--fast-placement", "paged"], "set fast_capacity too"),
        (["demo", "--kv", "--fast-batch", "4"], "fast_batch batches questions on the fast engine"),
        (["demo", "--kv", "--fast-capacity", "64", "--fast-batch", "0"], "--fast-batch: out of range"),
        (["demo", "--fast-batch", "2"], "--fast-batch: only apply with --kv"),
        (["demo", "--kv", "--fast-capacity", "64", "--fast-placement", "{x"], "--fast-placement: not valid"),
        (["bench", "text", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_expected_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(tmp_path)
    subst = {"{tiny}": tiny_model_dir, "{docs}": str(docs), "{tmp}": str(tmp_path)}
    for key, value in subst.items():
        argv = [a.replace(key, value) for a in argv]
    line = _fails_in_one_line(capsys, argv, message)
    assert SECRET not in line


def test_ask_kv_with_a_huge_document_says_it_exceeds_the_context(
    tmp_path: Path, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.txt"
    big.write_text("lorem ipsum dolor sit amet " * 40_000)  # ~1M characters, one passage
    argv = ["ask", "What?", "--docs", str(big), "--kv", "--reader", tiny_model_dir, "--max-new-tokens", "2"]
    _fails_in_one_line(capsys, argv, "exceeds the model's context")


def test_debug_env_shows_the_traceback(
    tmp_path: Path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    argv = ["index", str(write_docs(tmp_path)), "--store", "file://chunks/sub", "--model", tiny_model_dir]
    with pytest.raises(Exception, match="names the host") as info:
        main(argv)
    assert info.traceback  # raised, not turned into a line


def _index(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, int]:
    assert main(["index", *argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return summary["encoded"], summary["skipped"]


def test_index_rerun_repairs_a_damaged_chunk(
    tmp_path: Path, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "chunks"
    args = (str(write_docs(tmp_path)), "--store", str(store), "--model", tiny_model_dir)
    assert _index(capsys, *args) == (3, 0)
    files = sorted(p for p in store.rglob("*.safetensors") if "quarantine" not in p.parts)
    assert len(files) == 3
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # a torn write
    assert _index(capsys, *args) == (1, 2)  # re-encoded, not "skipped"
    assert files[0].is_file()  # repaired in place; the torn file went to quarantine
    assert _index(capsys, *args) == (0, 3)
