"""``ragcompress demo``: answer bundled questions over the bundled Wikipedia corpus."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ragcompress.cli.common import FORMATTER, UsageError, answer, emit, log, wrap
from ragcompress.cli.pipeline_args import add_pipeline_args, load_pipeline, sampling_from_args

if TYPE_CHECKING:
    from ragcompress.pipeline.core import Pipeline, PipelineResult
    from ragcompress.sampling import Sampling

__all__ = ["add_demo_parser", "cmd_demo"]


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    demo: argparse.ArgumentParser = sub.add_parser(
        "demo",
        formatter_class=FORMATTER,
        help="answer bundled questions over a bundled Wikipedia corpus",
        description=wrap(
            "Index the bundled corpus (45 SQuAD passages on 5 Wikipedia articles) with FAISS, "
            "answer bundled questions, and print for each the answer, the gold answer, the "
            "passages kept, tokens before → after, the compression ratio (before / after) and latency; "
            "on the KV path the context tokens kept and the chunks' bytes against fp16. Answers are "
            "printed as they are generated."
        ),
        epilog="examples:\n  ragcompress demo\n  ragcompress demo --json --limit 10\n"
        '  ragcompress demo --compressor \'{"name": "tokens", "ratio": 0.4}\'\n'
        "  ragcompress demo --compressor none --k 2\n  ragcompress demo --pipeline my.yaml --ratio 0.3\n"
        "  ragcompress demo --kv --cache-dir /tmp/chunks --json   # twice: the 2nd run encodes nothing\n"
        "  ragcompress demo --temperature 0.7 --seed 1            # sampled, reproducibly\n"
        "  ragcompress demo --kv --fast-capacity 4096 --fast-placement paged --fast-batch 3 --json\n"
        "                                          # 3 questions in one step, each over its own passages",
    )
    demo.add_argument(
        "--limit", type=int, default=3, metavar="N", help="questions to answer (1-10, default 3)"
    )
    add_pipeline_args(demo, kv=True)
    demo.set_defaults(func=cmd_demo)
    return demo


def cmd_demo(args: argparse.Namespace) -> int:
    from ragcompress.corpus import load_passages, load_questions

    questions = load_questions()
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    sampling = sampling_from_args(args)  # a bad flag fails before any model loads
    pipe = load_pipeline(args)
    passages = load_passages()
    log(f"indexing {len(passages)} bundled passages with FAISS")
    pipe.index(passages)
    correct = 0
    chosen = questions[: args.limit]
    for q, (result, streamed) in zip(
        chosen, _answers(pipe, [q.question for q in chosen], args, sampling), strict=True
    ):
        hit = q.answer.lower() in result.answer.lower()
        correct += hit
        extra = {"id": q.id, "gold": q.answer, "gold_passage": q.passage_id, "gold_in_answer": hit}
        emit(result, args.json, extra, streamed)
    log(f"{correct}/{len(chosen)} answers contain the gold answer")
    return 0


def _answers(
    pipe: Pipeline, questions: list[str], args: argparse.Namespace, sampling: Sampling
) -> Iterator[tuple[PipelineResult, bool]]:
    """Each question's ``(result, streamed)``: one by one (streamed unless --json/--no-stream), or
    with ``--fast-batch`` N > 1 all together through :meth:`Pipeline.run_batch` (greedy)."""
    if (getattr(args, "fast_batch", None) or 1) == 1:
        for q in questions:
            yield answer(pipe, q, args, sampling)
        return
    if not sampling.greedy:
        raise UsageError("--fast-batch answers greedily: drop --temperature/--top-p/--top-k/--seed/--stop")
    log(f"answering {len(questions)} questions in batches of {args.fast_batch}")
    for result in pipe.run_batch(questions, max_new_tokens=args.max_new_tokens):
        yield result, False
