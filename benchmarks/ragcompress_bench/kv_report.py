"""Summary table, JSON and plot of ``ragcompress bench kv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragcompress_bench.kv_contenders import CHUNKS, FULL, KVContender

__all__ = ["markdown", "summarize", "write_reports"]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    rows: list[dict[str, Any]],
    line: Sequence[KVContender],
    unavailable: dict[str, str],
    errors: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """One row per contender, in line-up order; agreement/Δ are per example against the baselines."""
    from ragcompress_bench.metrics import token_f1

    full = {r["example"]: r for r in rows if r["contender"] == FULL}
    chunks = {r["example"]: r for r in rows if r["contender"] == CHUNKS}
    out: list[dict[str, Any]] = []
    for c in line:
        s: dict[str, Any] = {"contender": c.label, "family": c.family, "version": c.version}
        rs = [r for r in rows if r["contender"] == c.label]
        if c.label in unavailable:
            s["unavailable"] = unavailable[c.label]
        elif not rs:
            s["unavailable"] = "every example failed: " + errors.get(c.label, ["no examples"])[0]
        if c.label in errors:
            s["errors"] = errors[c.label]
        if rs:
            s.update(
                n=len(rs),
                bytes_frac=_mean([r["bytes_frac"] for r in rs]),
                agree_full=_mean(
                    [float(r["tokens"] == full[r["example"]]["tokens"]) for r in rs if r["example"] in full]
                ),
                agree_chunks=_mean(
                    [
                        float(r["tokens"] == chunks[r["example"]]["tokens"])
                        for r in rs
                        if r["example"] in chunks
                    ]
                ),
                token_agree=_mean([r["token_agree"] for r in rs if "token_agree" in r]),
                gold_ll=_mean([r["gold_ll"] for r in rs]),
                delta_ll=_mean(
                    [r["gold_ll"] - full[r["example"]]["gold_ll"] for r in rs if r["example"] in full]
                ),
                f1=_mean([token_f1(r["text"], r["answers"]) for r in rs]),
                ttft_ms=_mean([r["ttft_ms"] for r in rs]),
                encode_ms=_mean([r["encode_ms"] for r in rs]),
            )
        out.append(s)
    return out


def _f(v: Any, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    head = [
        f"# bench kv: {payload['dataset']}, {len(payload['examples'])} questions, k={payload['args']['k']}",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {m.get('cpu_model', m.get('processor'))}, {m.get('cpus')} CPUs, torch {m.get('torch')}, "
        f"cuda: {m.get('cuda')}  ",
        f"Reader: {payload['reader']} ({payload['dtype']}). Wall time: {payload['wall_s']:.0f} s. "
        "Bytes are stored bytes over the fp16 bytes of the same tokens (an fp32 reader's uncompressed "
        "cache is 2.0); kvpress rows are kept tokens of the whole-context prefill.",
        "",
        "| contender | version | bytes / fp16 | agrees w/ full prefill | agrees w/ chunks "
        "| next-token agrees w/ chunks | gold LL / token | Δ LL vs full | F1 | TTFT ms | encode ms | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in payload["summary"]:
        note = s.get("unavailable", "")
        if not note and s.get("errors"):
            note = f"{len(s['errors'])} example(s) failed: {s['errors'][0][:160]}"
        head.append(
            f"| {s['contender']} | {s['version']} | {_f(s.get('bytes_frac'), '{:.3f}')} | "
            f"{_f(s.get('agree_full'), '{:.2f}')} | {_f(s.get('agree_chunks'), '{:.2f}')} | "
            f"{_f(s.get('token_agree'), '{:.3f}')} | {_f(s.get('gold_ll'), '{:.3f}')} | "
            f"{_f(s.get('delta_ll'), '{:+.3f}')} | "
            f"{_f(s.get('f1'), '{:.2f}')} | "
            f"{_f(s.get('ttft_ms'), '{:.0f}')} | {_f(s.get('encode_ms'), '{:.0f}')} | {note} |"
        )
    return "\n".join(head) + "\n"


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    """Fidelity (answer and next-token agreement, Δ log-likelihood) against stored bytes, one
    point per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ours": "tab:blue", "kvpress": "tab:orange", "baseline": "black"}
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    for ax, key, ylabel in (
        (axes[0], "agree_chunks", "greedy answer agreement with uncompressed chunks"),
        (axes[1], "token_agree", "next-token agreement with uncompressed chunks"),
        (axes[2], "delta_ll", "Δ gold log-likelihood / token vs full prefill"),
    ):
        for s in summary:
            if s.get(key) is None or s.get("bytes_frac") is None:
                continue
            ax.scatter(s["bytes_frac"], s[key], color=colors.get(s["family"], "gray"), s=25)
            ax.annotate(
                s["contender"],
                (s["bytes_frac"], s[key]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        full = next((x.get(key) for x in summary if x["contender"] == FULL), None)
        if key != "delta_ll" and full is not None:
            # how far a full prefill itself lands from the chunks: the KV path's own deviation
            ax.axhline(full, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("stored bytes / fp16 bytes")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("blue: ragcompress, orange: kvpress, black: full prefill")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(out: Path, payload: dict[str, Any]) -> str:
    """Write ``kv.json``, ``kv.md`` and ``kv.png`` under ``out``; returns the markdown."""
    from ragcompress_bench.report import machine, write_json

    payload = {**payload, "machine": machine()}
    md = markdown(payload)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kv.md").write_text(md)
    write_json(out / "kv.json", payload)
    title = f"bench kv: {payload['dataset']}, fidelity vs stored bytes (dashed: full prefill)"
    plot(payload["summary"], out / "kv.png", title)
    return md
