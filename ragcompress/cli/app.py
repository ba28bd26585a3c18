"""The ``ragcompress`` command line: demo, ask, index, bench, models (one module per command).

Results go to stdout (``--json``: one JSON object per line); progress and library logs go to
stderr, so ``ragcompress demo --json | jq`` sees clean JSON lines. Bad input, and every expected
error (a value, type, store or OS error: a bad store URL, an unreachable Redis, a document too
long for the model, a missing file), exits with status 2 and one line
``ragcompress COMMAND: error: ...`` on stderr, URLs redacted. ``RAGCOMPRESS_DEBUG=1`` lets the
exception through with its traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ragcompress.cli.ask import add_ask_parser
from ragcompress.cli.bench import add_bench_parser
from ragcompress.cli.common import FORMATTER, add_output_flags, quiet_libraries, wrap
from ragcompress.cli.demo import add_demo_parser
from ragcompress.cli.errors import DEBUG_ENV, error_line, expected
from ragcompress.cli.index import add_index_parser
from ragcompress.cli.models import add_models_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from ragcompress import __version__

    parser = argparse.ArgumentParser(
        prog="ragcompress",
        formatter_class=FORMATTER,
        description=wrap(
            "Context compression for retrieval-augmented generation: retrieve, compress "
            "the passages, answer with a local reader."
        ),
        epilog="examples:\n  ragcompress demo\n  ragcompress demo --json --limit 5\n"
        "  ragcompress ask 'Who founded X?' --docs notes/\n  ragcompress index notes/ --out notes.idx\n"
        "  ragcompress models\n\nRun `ragcompress COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ragcompress {__version__}")
    add_output_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_parser(sub)
    add_ask_parser(sub)
    add_index_parser(sub, FORMATTER)
    add_bench_parser(sub)
    add_models_parser(sub, FORMATTER)
    for command in sub.choices.values():
        add_output_flags(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    quiet_libraries(verbose=args.verbose, quiet=args.quiet)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `ragcompress demo --json | head -1`
        return 0
    except Exception as err:
        if not expected(err) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"ragcompress {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2
