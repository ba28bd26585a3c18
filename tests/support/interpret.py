"""Run a Triton check on the CPU, interpreted, in a fresh Python process.

Triton's nested ``@triton.jit`` helpers (and its reductions) only run interpreted when
``TRITON_INTERPRET=1`` is set before triton is first imported, which the test process has
already done; so a check that calls such a kernel runs as a script in a process of its own,
with the repository on its path. The interpreter accepts kernels the compiler refuses, so the
same script then runs once more with every launch compiled for sm_90 and not run
(:mod:`tests.support.sm90`): a kernel that would not compile for an H100/H200 fails the test
here, on a machine without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_interpreted(script: str, *args: str, timeout: int = 600) -> str:
    """Run ``script`` (Python source) with ``args`` under TRITON_INTERPRET=1; fail the calling
    test with the script's stderr tail unless it exits 0, else return what it printed. Then
    :func:`compiles_for_sm90` on the same script. Skips without Triton."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    compiles_for_sm90(script, *args, timeout=timeout)
    return done.stdout


def compiles_for_sm90(script: str, *args: str, timeout: int = 600) -> list[str]:
    """Run ``script`` with every Triton launch compiled for sm_90 and not run; fail the calling
    test if a kernel does not compile, or if none was launched. Returns the kernels compiled.
    The script's own exit status is not checked: its outputs are garbage there, so a check of
    them may fail (the kernels launched after such a failure go unchecked)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sm90.log"
        log.touch()
        env.update(PYTHONPATH=str(ROOT), RAGCOMPRESS_SM90_LOG=str(log), TRITON_DEFAULT_FP_FUSION="1")
        prelude = "import tests.support.sm90 as _sm90\n_sm90.install()\n"
        done = subprocess.run(
            [sys.executable, "-c", prelude + script, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        lines = log.read_text().splitlines()
    if lines and lines[0].startswith("unavailable "):
        pytest.skip(f"no compile-only Triton driver with this Triton: {lines[0]}")
    errors = [line for line in lines if line.startswith("error ")]
    assert not errors, "\n".join(errors)
    compiled = [line.split()[1] for line in lines]
    assert compiled, f"no Triton kernel was launched in the sm_90 compile run: {done.stderr[-3000:]}"
    return compiled
