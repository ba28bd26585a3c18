"""``ragcompress ask``: answer one question over your own documents or a saved index."""

from __future__ import annotations

import argparse
from typing import Any

from ragcompress.cli.common import FORMATTER, UsageError, answer, emit, log, wrap
from ragcompress.cli.pipeline_args import add_pipeline_args, load_pipeline, sampling_from_args

__all__ = ["add_ask_parser", "cmd_ask"]


def add_ask_parser(sub: Any) -> argparse.ArgumentParser:
    ask: argparse.ArgumentParser = sub.add_parser(
        "ask",
        formatter_class=FORMATTER,
        help="answer a question over your own documents",
        description=wrap(
            "Answer QUESTION from your documents: a .txt/.md/.jsonl file or a folder of them "
            '(.txt/.md split into passages at blank lines; .jsonl: one {"text": ...} per line), '
            "or an index saved by `ragcompress index`. The answer is printed as it is generated "
            "(greedy unless --temperature is given)."
        ),
        epilog="examples:\n  ragcompress ask 'What is the Lorelei?' --docs notes.md\n"
        "  ragcompress ask 'When was it founded?' --docs docs/ --k 6 --ratio 0.3 --json\n"
        "  ragcompress ask 'Who wrote it?' --index notes.idx --kv\n"
        "  ragcompress ask 'Summarize it.' --docs notes.md --temperature 0.7 --seed 1 --stop '\\n'",
    )
    ask.add_argument("question", help="the question to answer")
    src = ask.add_mutually_exclusive_group(required=True)
    src.add_argument("--docs", metavar="FILE_OR_DIR", help="documents to index for this question")
    src.add_argument("--index", metavar="INDEX", help="a folder written by `ragcompress index`")
    add_pipeline_args(ask, kv=True)
    ask.set_defaults(func=cmd_ask)
    return ask


def cmd_ask(args: argparse.Namespace) -> int:
    from ragcompress.corpus import load_documents

    if not args.question.strip():
        raise UsageError("the question is empty")
    sampling = sampling_from_args(args)  # a bad flag fails before any model loads
    if args.index:
        from ragcompress.retrieve import FaissRetriever

        retriever = FaissRetriever.load(args.index)
        pipe = load_pipeline(args)
        pipe.retriever = retriever
    else:
        docs = load_documents(args.docs)  # before loading models: bad input fails fast
        pipe = load_pipeline(args)
        log(f"indexing {len(docs)} passages from {args.docs}")
        pipe.index(docs)
    result, streamed = answer(pipe, args.question, args, sampling)
    emit(result, args.json, {}, streamed)
    return 0
