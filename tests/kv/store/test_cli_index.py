"""`ragcompress index DOCS --store URL`: pre-encodes a folder into a real Redis, idempotently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ragcompress.cli.app import main
from tests.support.tiny import write_docs


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_index_into_redis_twice_encodes_once(
    tmp_path: Path, redis_url: str, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(tmp_path)
    args = ("index", str(docs), "--store", redis_url, "--model", tiny_model_dir, "--json")
    first = _run(capsys, *args)
    assert (first["passages"], first["encoded"], first["skipped"]) == (3, 3, 0)
    second = _run(capsys, *args)
    assert (second["passages"], second["encoded"], second["skipped"]) == (3, 0, 3)


def test_a_different_press_is_a_different_chunk(
    tmp_path: Path, redis_url: str, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(tmp_path)
    base = ("index", str(docs), "--store", redis_url, "--model", tiny_model_dir, "--json")
    _run(capsys, *base)
    pressed = _run(capsys, *base, "--press", '{"name": "quantize", "bits": 4}')
    assert pressed["encoded"] == 3  # the cache key includes the press spec: no wrong hit


def test_index_needs_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(write_docs(tmp_path))]) == 2
    assert "--store" in capsys.readouterr().err


def test_unreachable_store_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["index", str(write_docs(tmp_path)), "--store", "redis://127.0.0.1:1/0", "--model", tiny_model_dir]
    assert main(argv) == 2
    assert "unavailable" in capsys.readouterr().err


def test_a_tenant_for_a_disk_store_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "chunks"
    argv = ["index", str(write_docs(tmp_path)), "--store", str(store), "--tenant", "acme"]
    assert main([*argv, "--model", tiny_model_dir]) == 2
    err = capsys.readouterr().err
    assert "tenant 'acme'" in err and str(store / "acme") in err
    assert not store.exists()
