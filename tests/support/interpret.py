"""Run a Triton check on the CPU, interpreted, in a fresh Python process.

Triton's nested ``@triton.jit`` helpers (and its reductions) only run interpreted when
``TRITON_INTERPRET=1`` is set before triton is first imported, which the test process has
already done; so a check that calls such a kernel runs as a script in a process of its own,
with the repository on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_interpreted(script: str, *args: str, timeout: int = 600) -> str:
    """Run ``script`` (Python source) with ``args`` under TRITON_INTERPRET=1; fail the calling
    test with the script's stderr tail unless it exits 0, else return what it printed. Skips
    without Triton."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
