"""What every ``ragcompress`` command shares: the usage error, logging to stderr, the help
formatter, and printing a pipeline result."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragcompress.pipeline.core import PipelineResult

__all__ = ["FORMATTER", "UsageError", "emit", "log", "quiet_libraries", "wrap"]

# RawDescriptionHelpFormatter keeps the examples' line breaks; the prose is wrapped by `wrap`.
FORMATTER = argparse.RawDescriptionHelpFormatter


class UsageError(Exception):
    """Bad input from the command line: printed as ``error: ...`` with exit status 2."""


def wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    # Before transformers is imported: its progress bars and warnings would otherwise
    # interleave with our output.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers missing: the command that needs it will say so
        pass


def emit(result: PipelineResult, as_json: bool, extra: dict[str, Any]) -> None:
    """Print one result: a JSON line (``as_json``) or a short human-readable block."""
    record = {**result.as_dict(), **extra}
    if as_json:
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    ratio = f"{record['ratio']:.2f}x" if record["ratio"] is not None else "all dropped"
    answer = (record["answer"] or "(empty)").replace("\n", "\n           ")
    lines = [f"Q: {record['question']}", f"  answer : {answer}"]
    if "gold" in record:
        lines.append(f"  gold   : {record['gold']}")
    lines.append(f"  kept   : {len(result.passages)}/{len(result.retrieved)} passages")
    for p in record["passages_kept"]:
        lines.append(f"    [{p['id']}] {p['text']}")
    lines.append(
        f"  tokens : {record['tokens_before']} → {record['tokens_after']} ({ratio}, {record['compressor']})"
    )
    timing = f"  latency: {record['latency_ms']:.0f} ms (ttft {record['ttft_ms']:.0f} ms)"
    if "chunks_hit" in record:
        timing += f"  chunks: {record['chunks_hit']} hit, {record['chunks_encoded']} encoded"
    lines.append(timing)
    print("\n".join(lines) + "\n", flush=True)
