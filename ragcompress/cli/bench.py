"""``ragcompress bench NAME``: run a benchmark of the separate ``ragcompress-bench`` package."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from ragcompress.cli.common import FORMATTER, UsageError, wrap

__all__ = ["BENCHES", "add_bench_parser", "cmd_bench", "run_bench"]

BENCHES = ("text", "kv", "ttft", "fidelity")
PACKAGE = "ragcompress_bench"
INSTALL_HINT = "pip install -e benchmarks from a ragcompress checkout (./install.sh --bench adds the anchors)"


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    bench: argparse.ArgumentParser = sub.add_parser(
        "bench",
        formatter_class=FORMATTER,
        help="run a benchmark (text, kv, ttft, fidelity; needs the ragcompress-bench package)",
        description=wrap(
            "Run a benchmark module ragcompress_bench.NAME of the separate ragcompress-bench "
            f"package ({INSTALL_HINT}); arguments after NAME go to it "
            "(`ragcompress bench NAME --help` shows them)."
        ),
        epilog="examples:\n  ragcompress bench text --help\n  ragcompress bench ttft",
    )
    bench.add_argument("name", choices=BENCHES, help="which benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=cmd_bench)
    return bench


def cmd_bench(args: argparse.Namespace) -> int:
    return run_bench(args.name, list(args.rest))


def run_bench(name: str, argv: list[str], package: str = PACKAGE) -> int:
    """Import ``<package>.<name>`` and return its ``main(argv)``."""
    module = f"{package}.{name}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == package:  # the whole benchmark distribution is missing
            raise UsageError(f"the benchmarks are not installed (package {package}): {INSTALL_HINT}") from err
        if err.name and module.startswith(err.name):
            raise UsageError(f"benchmark {name!r} is not available: no module {module}") from err
        raise
    try:
        return int(mod.main(argv) or 0)
    except SystemExit as stop:
        if isinstance(stop.code, str):  # a benchmark's `raise SystemExit("--limit must be ...")`
            raise UsageError(stop.code) from None
        raise
