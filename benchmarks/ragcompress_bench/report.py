"""Turning benchmark rows into a markdown table, a JSON file and a fidelity-vs-compression plot."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["machine", "markdown_table", "save_figure", "write_json", "write_plot"]

COLUMNS = (
    ("contender", "contender"),
    ("version", "version"),
    ("target ratio", "target"),
    ("achieved ratio", "achieved"),
    ("gold answer survives %", "survives"),
    ("EM / F1 or acc %", "accuracy"),
    ("agrees w/ uncompressed %", "agreement"),
    ("gold log-lik", "gold_ll"),
    ("compressor ms", "latency_ms"),
    ("TTFT ms", "ttft_ms"),
    ("peak mem MB", "peak_mb"),
    ("note", "note"),
)


def _ratio(keep: float | None) -> str:
    if keep is None:
        return "own"
    return f"{1 / keep:g}× (keep {keep:g})"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}"


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "∞"
    return fmt.format(v)


def _cells(row: dict[str, Any]) -> dict[str, str]:
    s = row.get("summary") or {}
    if row.get("unavailable"):
        cells = dict.fromkeys((k for _, k in COLUMNS), "—")
        cells.update(contender=row["name"], version=row["version"], target=_ratio(row["target"]))
        cells["note"] = "did not run: " + row["unavailable"].replace("|", "/").replace("\n", " ")
        return cells
    if s.get("em") is not None:
        acc = f"{_pct(s['em'])} / {_pct(s['f1'])}"
    elif s.get("f1") is not None:
        acc = f"F1 {_pct(s['f1'])}"
    else:
        acc = f"acc {_pct(s.get('accuracy'))}"
    errors = row.get("errors", 0)
    return {
        "contender": row["name"],
        "version": row["version"],
        "target": _ratio(row["target"]),
        "achieved": _num(s.get("ratio"), "{:.2f}×"),
        "survives": _pct(s.get("survives")),
        "accuracy": acc,
        "agreement": _pct(s.get("agreement")),
        "gold_ll": _num(s.get("gold_ll"), "{:.2f}"),
        "latency_ms": _num(s.get("latency_ms")),
        "ttft_ms": _num(s.get("ttft_ms")),
        "peak_mb": _num(s.get("peak_mb")),
        "note": f"{errors} example(s) failed: {row.get('first_error', '')}" if errors else "",
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per contender row; rows that could not run say why in the last column."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = _cells(row)
        lines.append("| " + " | ".join(cells[k] for _, k in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    """What ran the benchmark: OS, Python, CPU count, torch and its device."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_json(path: Path, payload: dict[str, Any]) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, float) and math.isinf(o):
            return "inf"
        return str(o)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=default, allow_nan=False) + "\n")
    tmp.replace(path)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def write_plot(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """Fidelity vs compression: gold-answer survival and agreement against achieved ratio."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError("the plot needs matplotlib: pip install matplotlib") from err
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    metrics = (
        ("survives", "gold answer survives (%)", 100),
        ("agreement", "agrees with uncompressed (%)", 100),
        ("gold_ll", "gold answer log-likelihood", 1),
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if not row.get("unavailable") and row.get("summary"):
            groups.setdefault(row["name"], []).append(row["summary"])
    markers = "os^vD<>pP*Xh"
    for ax, (key, label, scale) in zip(axes, metrics, strict=True):
        for i, (name, sums) in enumerate(groups.items()):
            pts = sorted(
                (s["ratio"], s[key] * scale) for s in sums if _finite(s.get("ratio")) and _finite(s.get(key))
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker=markers[i % len(markers)],
                    color=plt.get_cmap("tab20")(i % 20),  # the default cycle repeats after 10 rows
                    label=name,
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("achieved compression (× fewer tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    save_figure(fig, path, title, dpi=110)


def save_figure(fig: Any, path: Path, title: str, dpi: int = 120) -> None:
    """Title, lay out and write a matplotlib figure to ``path`` (folders created), then close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
