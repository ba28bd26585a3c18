"""``benchmarks/store_read.py`` as a small smoke run: two checkouts (here the same package under
two names) each write the chunks in their own format and read them back in processes of their
own; the table has every tree's columns beside the floors. Timings are not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_store_read_compares_two_trees(tmp_path: Path) -> None:
    trees = []
    for name in ("old", "new"):
        tree = tmp_path / name
        tree.mkdir()
        (tree / "ragcompress").symlink_to(ROOT / "ragcompress")
        trees.append(str(tree))
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    cmd = [sys.executable, str(ROOT / "benchmarks" / "store_read.py"), "--trees", ",".join(trees)]
    cmd += ["--contexts", "1024", "--dense-contexts", "", "--repeats", "1", "--out", str(tmp_path / "out")]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "out" / "store_read.json").read_text())
    assert report["trees"] == ["old", "new"] and report["rows"]
    for row in report["rows"]:
        assert row["files"] == 2 and row["MB"] > 0
        assert all(row[k] > 0 for k in ("read_ms", "read_sha256_ms", "read_xxh3_ms"))
        for tree in ("old", "new"):
            assert all(row[f"{tree} {k}"] > 0 for k in ("lookup_ms", "lookup_many_ms", "read_ahead_2_ms"))
    assert "| context |" in (tmp_path / "out" / "store_read.md").read_text()
