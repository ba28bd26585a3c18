"""What the LangChain and LlamaIndex QA demos share: offline setup, the MiniLM embedding,
the command line and the printed report. Imported by the demo scripts as a sibling module."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragcompress.corpus import load_questions

# Everything loads from local packages; never wait on a model hub. (transformers is imported
# lazily, at the first model load, so setting these when the demos import this is early enough.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_SPEC = '{"name": "sentences", "ratio": 0.5}'


def embed(texts: list[str]) -> list[list[float]]:
    """Unit-norm vectors of ``texts`` from ragcompress's packaged all-MiniLM-L6-v2."""
    from ragcompress.models.load import load_embedder

    vectors = load_embedder().encode(list(texts), normalize_embeddings=True)
    return [[float(x) for x in v] for v in vectors]


def parse_args(description: str, argv: list[str] | None, items: str) -> argparse.Namespace:
    """The demos' shared command line; ``args.spec`` is ``--compressor`` parsed (JSON or a name).

    ``items`` names what the retriever returns ("documents", "nodes") in the help text.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--question", default=load_questions()[0].question, help="question to answer")
    parser.add_argument("--compressor", default=DEFAULT_SPEC, help="ragcompress spec (JSON or a name)")
    parser.add_argument("--k", type=int, default=4, help=f"{items} to retrieve (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default=None, help="reader: packaged alias, path or HF id")
    args = parser.parse_args(argv)
    try:
        args.spec = json.loads(args.compressor)
    except json.JSONDecodeError:
        args.spec = args.compressor
    return args


@dataclass(frozen=True)
class Shown:
    """One kept item as the report prints it: id, retrieval score, per-item stats, new text."""

    id: str
    stats: Mapping[str, Any]
    text: str
    score: float | None = None


def report(question: str, answer: str, spec: Any, kept: Sequence[Shown], note: str = "") -> None:
    """Print the answer (with the gold answer for a bundled question), what the compressor did
    to the whole batch (``note`` appended to that line) and each kept item."""
    gold = next((q.answer for q in load_questions() if q.question == question), None)
    print(f"question: {question}")
    print(f"answer:   {answer}" + (f"   (gold: {gold})" if gold else ""))
    print(f"compressor: {json.dumps(spec)}")
    if kept:
        batch = kept[0].stats["batch"]
        print(
            f"tokens: {batch['tokens_before']} -> {batch['tokens_after']} "
            f"({batch['passages_before']} -> {batch['passages_after']} passages)"
            + (f"; {note}" if note else "")
        )
    else:
        print("tokens: every retrieved passage was dropped")
    for item in kept:
        score = "" if item.score is None else f"score {item.score:.3f}, "
        s = item.stats
        print(f"\n[{item.id}] {score}{s['tokens_before']} -> {s['tokens_after']} tokens\n{item.text}")
