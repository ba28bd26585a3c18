"""What every ``ragcompress`` command shares: the usage error, logging to stderr, the help
formatter, and answering a question and printing its result (streamed or whole)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragcompress.pipeline.core import Pipeline, PipelineResult
    from ragcompress.sampling import Sampling

__all__ = ["FORMATTER", "UsageError", "add_output_flags", "answer", "emit", "log", "quiet_libraries", "wrap"]

_INDENT = "\n           "  # continuation lines of a multi-line answer

# RawDescriptionHelpFormatter keeps the examples' line breaks; the prose is wrapped by `wrap`.
FORMATTER = argparse.RawDescriptionHelpFormatter


class UsageError(Exception):
    """Bad input from the command line: printed as ``error: ...`` with exit status 2."""


def wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


_OUTPUT = {"level": 0}  # -1: --quiet, 0: default, 1: --verbose (set once per command by main)


def log(msg: str) -> None:
    """A progress line on stderr (none under ``--quiet``)."""
    if _OUTPUT["level"] >= 0:
        print(msg, file=sys.stderr, flush=True)


def add_output_flags(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``-v/--verbose`` and ``-q/--quiet``, accepted before or after the command: the
    command's copy defaults to SUPPRESS so it never overrides the top-level one."""
    group = parser.add_mutually_exclusive_group()
    default: object = False if top else argparse.SUPPRESS
    verbose_help = "also show library logs (INFO) on stderr"
    quiet_help = "no progress lines or bars, only results and errors"
    group.add_argument("-v", "--verbose", action="store_true", default=default, help=verbose_help)
    group.add_argument("-q", "--quiet", action="store_true", default=default, help=quiet_help)


def quiet_libraries(verbose: bool = False, quiet: bool = False) -> None:
    """Set how much goes to stderr: libraries' warnings and bars off by default (they would
    interleave with our output), their INFO logs on with ``verbose``, every progress bar
    (tqdm, ours included) and progress line off with ``quiet``. Call before transformers loads."""
    import logging

    _OUTPUT["level"] = 1 if verbose else -1 if quiet else 0
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm >= 4.66 reads it for every bar
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    logging.getLogger("ragcompress").setLevel(
        logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    )
    try:
        from transformers.utils import logging as hf_logging

        if verbose:
            hf_logging.set_verbosity_info()
        else:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
    except ImportError:  # transformers missing: the command that needs it will say so
        pass


def answer(
    pipe: Pipeline, question: str, args: argparse.Namespace, sampling: Sampling
) -> tuple[PipelineResult, bool]:
    """Answer ``question`` with ``sampling`` (from the generation flags); ``(result, streamed)``:
    without ``--json`` or ``--no-stream`` the question and the answer are printed as the answer
    is generated, and :func:`emit` then prints the rest (``streamed=True``)."""
    if args.json or args.no_stream:
        return pipe.run(question, max_new_tokens=args.max_new_tokens, sampling=sampling), False
    stream = pipe.stream(question, max_new_tokens=args.max_new_tokens, sampling=sampling)
    out = sys.stdout
    out.write(f"Q: {question}\n  answer : ")
    out.flush()
    shown = False
    for piece in stream:
        out.write(piece.replace("\n", _INDENT))
        out.flush()
        shown = True
    out.write("\n" if shown else "(empty)\n")
    out.flush()
    assert stream.result is not None  # the stream was read to its end
    return stream.result, True


def emit(result: PipelineResult, as_json: bool, extra: dict[str, Any], streamed: bool = False) -> None:
    """Print one result: a JSON line (``as_json``) or a short human-readable block (without
    the question and answer lines when :func:`answer` streamed them)."""
    record = {**result.as_dict(), **extra}
    if as_json:
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    lines = [] if streamed else [f"Q: {record['question']}", f"  answer : {_answer_text(record)}"]
    if "gold" in record:
        lines.append(f"  gold   : {record['gold']}")
    lines.append(f"  kept   : {len(result.passages)}/{len(result.retrieved)} passages")
    for p in record["passages_kept"]:
        lines.append(f"    [{p['id']}] {p['text']}")
    lines.extend(_compression_lines(record))
    timing = f"  latency: {record['latency_ms']:.0f} ms (ttft {record['ttft_ms']:.0f} ms)"
    if "chunks_hit" in record:
        timing += f"  chunks: {record['chunks_hit']} hit, {record['chunks_encoded']} encoded"
    lines.append(timing)
    print("\n".join(lines) + "\n", flush=True)


def _answer_text(record: dict[str, Any]) -> str:
    return str(record["answer"] or "(empty)").replace("\n", _INDENT)


def _compression_lines(record: dict[str, Any]) -> list[str]:
    """Text path: tokens before → after (ratio). KV path: the text step's tokens, then the
    context tokens the chunks keep and their stored bytes against fp16 (the KV path's ratio)."""
    before, after, name = record["tokens_before"], record["tokens_after"], record["compressor"]
    ratio = f"{record['ratio']:.2f}x" if record["ratio"] is not None else "all dropped"
    if record.get("path") != "kv":
        return [f"  tokens : {before} → {after} ({ratio}, {name})"]
    return [
        f"  tokens : {before} → {after} text tokens ({name})",
        f"  kv     : {record['chunk_tokens_full']} → {record['chunk_tokens']} context tokens kept, "
        f"{_size(record['chunk_bytes'])} stored vs {_size(record['chunk_bytes_fp16'])} fp16 ({ratio})",
    ]


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
