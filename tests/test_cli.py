"""The `ragcompress` command line: help, bad input (exit 2 before any model loads), bench
dispatch, and the real demo/index/ask runs (packaged models: marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ragcompress.cli.app import main
from ragcompress.cli.bench import run_bench
from ragcompress.corpus import load_passages

SUBCOMMANDS = ["demo", "ask", "index", "bench", "models"]


@pytest.mark.parametrize("argv", [[], *([c] for c in SUBCOMMANDS)])
def test_help_explains_every_command(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ragcompress")
    assert "example" in out  # every command shows how to call it
    if not argv:
        assert all(c in out for c in SUBCOMMANDS)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: ragcompress" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "Who?", "--docs", "{tmp}/missing.txt"], "missing.txt' does not exist"),
        (["ask", "Who?", "--docs", "{tmp}"], "holds no .txt, .md, .jsonl files"),
        (["ask", " ", "--docs", "{tmp}"], "the question is empty"),
        (["index", "{tmp}", "--out", "{tmp}/idx"], "holds no .txt, .md, .jsonl files"),
        (["ask", "Who?", "--index", "{tmp}"], "index.faiss is missing"),
        (["demo", "--ratio", "0"], "--ratio: out of range: must be > 0, got 0.0"),
        (["demo", "--ratio", "1.5"], "--ratio: out of range: must be <= 1, got 1.5"),
        (["demo", "--k", "-3"], "--k: out of range: must be >= 1, got -3"),
        (["demo", "--compressor", '{"name": "nosuch"}'], "--compressor: unknown method 'nosuch'"),
        (
            ["demo", "--compressor", "sentencez"],
            "--compressor: unknown method 'sentencez'; text compressors:",
        ),
        (
            ["demo", "--compressor", '{"name": "tokens", "ratio": "half"}'],
            "--compressor: ratio: Input should be",
        ),
        (["demo", "--compressor", "{broken"], "--compressor: not valid JSON"),
        (["demo", "--compressor", "knorm"], "--compressor: 'knorm' is a KV press, not a text compressor"),
        (
            ["demo", "--kv", "--press", "sentences"],
            "--press: 'sentences' is a text compressor, not a KV press",
        ),
        (["demo", "--kv", "--press", '{"name": "quantize", "bits": "8"}'], "--press: bits: Input should be"),
        (
            ["index", "{tmp}", "--store", "{tmp}/c", "--press", "tokens"],
            "--press: 'tokens' is a text compressor",
        ),
        (["demo", "--kv", "--assembly", "knorm"], "--assembly: 'knorm' is a KV press, not an assembly mode"),
        (["demo", "--pipeline", "{tmp}/text-only.yaml"], "text-only.yaml: kv.cache_dirr: unknown key"),
        (["demo", "--pipeline", "nope"], "no pipeline 'nope'"),
        (["demo", "--limit", "0"], "--limit must be >= 1"),
        (["demo", "--cache-dir", "{tmp}"], "only apply with --kv"),
        (["demo", "--fast-capacity", "4096"], "only apply with --kv"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, argv, message):
    (tmp_path / "text-only.yaml").write_text("kv: {cache_dirr: /tmp/chunks}\n", encoding="utf-8")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_ask_needs_exactly_one_source(capsys):
    with pytest.raises(SystemExit) as info:
        main(["ask", "Who?"])
    assert info.value.code == 2
    assert "--docs" in capsys.readouterr().err


def test_bench_dispatches_to_module_main(tmp_path, monkeypatch):
    pkg = tmp_path / "mybench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "text.py").write_text("def main(argv):\n    return 3 if argv == ['--n', '2'] else 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_bench("text", ["--n", "2"], package="mybench") == 3
    with pytest.raises(Exception, match=r"benchmark 'kv' is not available: no module mybench\.kv"):
        run_bench("kv", [], package="mybench")


def test_bench_without_the_bench_package_says_how_to_install_it():
    with pytest.raises(Exception, match=r"not installed.*pip install -e benchmarks"):
        run_bench("text", [], package="no_such_bench_package")


def test_models_lists_packaged_models(capsys):
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {r["model"]: r for r in rows}
    assert by_name["smollm2-135m-instruct"]["role"] == "default reader"
    assert by_name["all-minilm-l6-v2"]["installed"] is True


@pytest.mark.slow
def test_demo_json_lines_from_a_fresh_process():
    # A subprocess, so that anything a library prints to stdout would break the JSON lines.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ragcompress.cli",
            "demo",
            "--json",
            "--limit",
            "3",
            "--max-new-tokens",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    ids = {p.id for p in load_passages()}
    for line in lines:
        rec = json.loads(line)
        for key in ("question", "answer", "tokens_before", "tokens_after", "ratio", "compressor",
                    "latency_ms", "gold", "passages_kept", "ttft_ms"):  # fmt: skip
            assert key in rec, key
        assert rec["compressor"] == "sentences"
        assert 0 < rec["tokens_after"] <= rec["tokens_before"] // 2  # the default keeps half
        assert rec["ratio"] == pytest.approx(rec["tokens_before"] / rec["tokens_after"], rel=1e-3)
        assert {p["id"] for p in rec["passages_kept"]} <= ids
        assert 0 < rec["ttft_ms"] <= rec["latency_ms"]
        assert rec["new_tokens"] <= 6


@pytest.mark.slow
def test_index_then_ask(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rhine.md").write_text(
        "Near Sankt Goarshausen, the Rhine flows around the famous rock Lorelei.\n\n"
        "Basel is the first major city in the course of the Rhine.\n",
        encoding="utf-8",
    )
    (docs / "oxygen.txt").write_text("The common allotrope of oxygen on Earth is dioxygen.\n")
    assert main(["index", str(docs), "--out", str(tmp_path / "idx")]) == 0
    assert "indexed 3 passages" in capsys.readouterr().out
    argv = ["ask", "What rock does the Rhine flow around?", "--index", str(tmp_path / "idx"),
            "--k", "1", "--compressor", "none", "--max-new-tokens", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in rec["passages_kept"]] == ["rhine.md#0"]
    assert rec["compressor"] == "none" and rec["tokens_before"] == rec["tokens_after"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_drops_progress_lines_and_keeps_results(tmp_path, capsys, where):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The Rhine flows around the rock Lorelei.\n", encoding="utf-8")
    cmd = ["index", str(docs), "--out", str(tmp_path / "idx")]
    argv = ["-q", *cmd] if where == "before" else [*cmd, "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "indexed 1 passages" in out.out and out.err.strip() == ""
    assert main([*cmd, "--verbose"]) == 0  # the next command in the process is not quiet
    assert "embedding 1 passages" in capsys.readouterr().err


def test_verbose_and_quiet_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as err:
        main(["index", "x", "--out", "y", "-q", "-v"])
    assert err.value.code == 2 and "not allowed with" in capsys.readouterr().err
