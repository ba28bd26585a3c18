"""The plot of ``ragcompress bench ttft``: time to first token against context length.

``python -m ragcompress.bench.ttft_plot ttft_gpu.json ttft_gpu.png`` redraws it from a saved report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_plot"]

SERIES = (
    ("full_prefill_ms", "full prefill", "tab:red"),
    ("hf_reuse_ms", "transformers cache reuse", "tab:orange"),
    ("ragcompress_ms", "ragcompress (bf16 chunks)", "tab:blue"),
    ("ragcompress_compressed_ms", "ragcompress (knorm 0.5 + int4)", "tab:green"),
    ("floor_ms", "bandwidth floor", "black"),
)


def write_plot(report: dict[str, Any], path: Path) -> bool:
    """Draw the report's rows (log-log); returns False, drawing nothing, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {path} not drawn", file=sys.stderr)
        return False
    rows = sorted(report["rows"], key=lambda r: r["context_tokens"])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key, label, color in SERIES:
        pts = [(r["context_tokens"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        if pts:
            style = "--" if key == "floor_ms" else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context tokens (prefix + chunks)")
    ax.set_ylabel("time to first token (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"TTFT from cached chunks: {report.get('shape', '')} on {report.get('device', '')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m ragcompress.bench.ttft_plot REPORT.json OUT.png")
    write_plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
