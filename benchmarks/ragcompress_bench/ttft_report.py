"""The report of ``ragcompress bench ttft``: JSON, markdown table, and a plot of time to first
token against context length.

``python -m ragcompress_bench.ttft_report ttft_gpu.json ttft_gpu.png`` redraws the plot from a
saved report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "device_name", "markdown", "write_plot", "write_report"]

SERIES = (
    ("full_prefill_ms", "full prefill", "tab:red"),
    ("hf_reuse_ms", "transformers cache reuse", "tab:orange"),
    ("hf_static_ms", "transformers StaticCache (compile: {compile})", "tab:purple"),
    ("ragcompress_ms", "ragcompress (bf16 chunks)", "tab:blue"),
    ("ragcompress_paged_ms", "ragcompress (bf16 chunks in a paged pool, zero-copy)", "tab:cyan"),
    ("ragcompress_paged_int4_ms", "ragcompress (chunks int4 in a paged pool, zero-copy)", "tab:olive"),
    ("ragcompress_paged_int8_ms", "ragcompress (chunks int8 in a paged pool, zero-copy)", "tab:brown"),
    ("ragcompress_compressed_ms", "ragcompress (knorm 0.5 + int4)", "tab:green"),
    ("floor_ms", "bandwidth floor", "black"),
)


# reports written before the StaticCache column was renamed name it hf_static_compiled_ms
_LEGACY = {"hf_static_ms": "hf_static_compiled_ms"}


def _value(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, or the same column under its earlier name; None when neither is there."""
    return row.get(key, row.get(_LEGACY.get(key, "")))


QPS_COLUMNS = ("batch", "context_tokens", "chunk_sets", "first_token_ms", "qps_first_token",
               "compute_floor_ms", "qps_compute_ceiling", "answer_ms", "qps_answers")  # fmt: skip


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
        label = label.format(compile=report.get("static_compile", "—"))  # the run's, where named
        pts = [(r["context_tokens"], v) for r in rows if isinstance(v := _value(r, key), int | float)]
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


def device_name(dev: Any) -> str:
    import torch

    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


COLUMNS = (
    "context_tokens",
    "full_prefill_ms",
    "hf_reuse_ms",
    "hf_static_ms",
    "hf_static_compile_s",
    "ragcompress_ms",
    "ragcompress_stored_ms",
    "ragcompress_stored_every_layer_ms",
    "ragcompress_paged_ms",
    "paged_load_host_ms",
    "ragcompress_paged_int4_ms",
    "ragcompress_paged_int8_ms",
    "ragcompress_compressed_ms",
    "floor_ms",
    "ragcompress_warm_ms",
    "ape_ms",
    "blend_05_ms",
    "blend_15_ms",
    "blend_question_15_ms",
    "blend_question_draft4_15_ms",
    "blend_question_30_ms",
    "blend_link_15_ms",
    "blend_link_draft4_15_ms",
)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# TTFT from cached chunks ({report['device']}, {report['shape']})",
        "",
        f"`{report['command']}`",
        "",
        "| " + " | ".join(COLUMNS) + " | same first token | static: same first token | "
        "full prefill top-2 margin |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for r in report["rows"]:
        cells = ["—" if (v := _value(r, c)) is None else str(v) for c in COLUMNS]
        # a differing first token is a bf16 tie, not an error, where the margin is ~0
        agree = (
            f"{r.get('fast_matches_full_prefill')} | {r.get('hf_static_matches_full_prefill')} | "
            f"{r.get('full_prefill_top2_margin', '—')}"
        )
        lines.append("| " + " | ".join(cells) + f" | {agree} |")
    lines += [
        "",
        f"copy bandwidth {report['copy_bandwidth_gbs']} GB/s (read + written); attention "
        f"backend {report['attention']}; floor = non-embedding weights "
        f"({report['weight_bytes'] / 1e9:.2f} GB) + context KV, over that bandwidth. "
        "hf_static: the question prefilled against a StaticCache of the context, its forward "
        f"compiled as --static-compile {report.get('static_compile', '—')}; compile time (s) in "
        "hf_static_compile_s, not in the ms.",
        "",
        "| batch | context | chunk sets | first token ms | queries/s (first token) | compute floor ms | "
        "queries/s at the compute floor | answer ms | queries/s (answers) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q in report["qps"]:
        lines.append("| " + " | ".join(str(q.get(c, "—")) for c in QPS_COLUMNS) + " |")
    lines += [
        "",
        f"compute floor = the step's matrix FLOPs (projections, MLP, attention, the last tokens' "
        f"output layer) at the rate of an 8192-square matmul in the same run "
        f"({report.get('matmul_tflops', '—')} TFLOP/s): no step over that context is faster.",
    ]
    from ragcompress_bench.ttft_host import host_lines
    from ragcompress_bench.ttft_profile import profile_lines

    lines += host_lines(report)
    lines += profile_lines(report)
    return "\n".join(lines) + "\n"


def write_report(
    out: Path,
    argv: list[str],
    args: Any,
    dev: Any,
    fast: Any,
    bw: float,
    wbytes: int,
    rows: list[dict[str, Any]],
    qps: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    import torch

    report = {
        "command": "ragcompress bench ttft " + " ".join(argv),
        "device": device_name(dev),
        "shape": args.shape,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "attention": type(fast.attention).__name__,
        "graphs": fast.graphs,
        "fused": type(fast.step).__name__ == "FusedStep",
        "copy_bandwidth_gbs": round(bw / 1e9, 1),
        "static_compile": args.static_compile,
        "weight_bytes": wbytes,
        "rows": rows,
        "qps": qps,
        **(extra or {}),
    }
    (out / "ttft_gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ttft_gpu.md").write_text(markdown(report))
    write_plot(report, out / "ttft_gpu.png")
    return report


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m ragcompress_bench.ttft_report REPORT.json OUT.png")
    write_plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
