"""The ``ragcompress`` command line: demo, ask, index, bench, models.

Results go to stdout (``--json``: one JSON object per line); progress and library logs go to
stderr, so ``ragcompress demo --json | jq`` sees clean JSON lines. Bad input, and every expected
error (a value, type, store or OS error: a bad store URL, an unreachable Redis, a document too
long for the model, a missing file), exits with status 2 and one line
``ragcompress COMMAND: error: ...`` on stderr, URLs redacted. ``RAGCOMPRESS_DEBUG=1`` lets the
exception through with its traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragcompress.pipeline.core import Pipeline, PipelineResult

__all__ = ["main"]

BENCHES = ("text", "kv", "ttft", "fidelity")
_F = argparse.RawDescriptionHelpFormatter


class UsageError(Exception):
    """Bad input from the command line: printed as ``error: ...`` with exit status 2."""


def _wrap(text: str) -> str:
    # RawDescriptionHelpFormatter keeps the examples' line breaks; wrap the prose ourselves.
    return textwrap.fill(text, width=88)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
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


# -- shared pipeline options -------------------------------------------------------------
def _add_pipeline_args(p: argparse.ArgumentParser, kv: bool = False) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument(
        "--pipeline",
        metavar="NAME|PATH",
        help="ready spec name (see `ragcompress models`) or a YAML file "
        "(default: text-only; kv-cached with --kv)",
    )
    g.add_argument(
        "--compressor",
        metavar="SPEC_JSON",
        help='replace the spec\'s compressors, e.g. \'{"name": "tokens", "ratio": 0.4}\', '
        "a list of specs (a chain), or 'none'",
    )
    g.add_argument(
        "--ratio",
        type=float,
        metavar="R",
        help="share of context tokens to keep, in (0, 1]; overrides the compressors' own",
    )
    g.add_argument("--k", type=int, metavar="K", help="passages retrieved per question (spec: retriever.k)")
    g.add_argument("--reader", metavar="MODEL", help="generator model: packaged alias, local path or HF id")
    g.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="reader weights' dtype (default auto: bfloat16 on a GPU, float32 on a CPU); "
        "bfloat16 halves a CPU reader's time on CPUs with avx512_bf16",
    )
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit in tokens")
    g.add_argument("--json", action="store_true", help="print one JSON object per question on stdout")
    if kv:
        g.add_argument(
            "--kv",
            action="store_true",
            help="answer from cached KV chunks (the KV path) instead of prefilling text",
        )
        g.add_argument("--cache-dir", metavar="DIR", help="with --kv: keep chunks on disk here too")
        g.add_argument(
            "--press",
            metavar="SPEC_JSON",
            help='with --kv: KV press(es) for chunks, e.g. \'{"name": "quantize", "bits": 8}\'',
        )
        g.add_argument(
            "--store", metavar="URL", help="with --kv: chunk store URL (memory://, file:///dir, redis://…)"
        )
        g.add_argument(
            "--assembly",
            metavar="SPEC_JSON",
            help='with --kv: how chunks are assembled, e.g. \'{"name": "blend", "recompute": 0.15}\' '
            'or \'{"name": "ape"}\' (default concat; spec: kv.assembly)',
        )
        g.add_argument(
            "--fast-capacity",
            metavar="TOKENS",
            type=int,
            help="with --kv: answer on the fast engine (one static KV buffer of this many context "
            "tokens; CUDA graphs and flash attention on a GPU) instead of transformers' forward",
        )


def _load_pipeline(args: argparse.Namespace) -> Pipeline:
    import yaml

    from ragcompress.pipeline.core import KVSpec, Pipeline, find_pipeline

    path = find_pipeline(args.pipeline or _default_pipeline(args))
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: a pipeline spec is a mapping")
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
    if args.reader:
        spec.setdefault("generator", {})["model"] = args.reader
    if args.dtype:
        spec.setdefault("generator", {})["dtype"] = args.dtype
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 0:
            raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
        spec.setdefault("generator", {})["max_new_tokens"] = args.max_new_tokens
    if args.k is not None:
        if args.k < 1:
            raise UsageError(f"--k must be >= 1, got {args.k}")
        spec.setdefault("retriever", {})["k"] = args.k
    compressors = None
    if args.compressor is not None:
        compressors = (
            [] if args.compressor.strip().lower() == "none" else _json_arg("--compressor", args.compressor)
        )
    kv = None
    if getattr(args, "kv", False):
        base = spec.pop("kv", None) or {}
        presses = _json_arg("--press", args.press) if args.press else base.get("presses") or []
        if args.store and args.cache_dir:
            raise UsageError("give --store URL or --cache-dir DIR, not both (file:///DIR is a disk store)")
        # An explicit --store replaces the spec's whole storage, its default cache_dir included.
        cache_dir = args.cache_dir or (None if args.store else base.get("cache_dir"))
        fast = args.fast_capacity if args.fast_capacity is not None else base.get("fast_capacity")
        if fast is not None and fast < 1:
            raise UsageError(f"--fast-capacity must be >= 1 context tokens, got {fast}")
        kv = KVSpec(
            cache_dir=cache_dir,
            presses=tuple(presses if isinstance(presses, list) else [presses]),
            store=args.store or base.get("store"),
            memory_bytes=int(base.get("memory_bytes", 2 << 30)),
            fast_capacity=fast,
            assembly=_json_arg("--assembly", args.assembly) if args.assembly else base.get("assembly"),
        )
    elif any(
        getattr(args, a, None) is not None
        for a in ("cache_dir", "press", "store", "fast_capacity", "assembly")
    ):
        raise UsageError("--cache-dir, --press, --store, --fast-capacity and --assembly only apply with --kv")
    _log(f"loading pipeline {path.stem} ({path})")
    from ragcompress.types import Budget

    try:
        budget = None if args.ratio is None else Budget(ratio=args.ratio)
    except ValueError as err:
        raise UsageError(f"--ratio: {err}") from None
    try:
        pipe = Pipeline.from_spec(spec, compressors=compressors, kv=kv)
    except (KeyError, TypeError, ValueError) as err:
        # unknown method names, bad parameters, ratios out of range: the user's input
        raise UsageError(f"{path.name}: {err.args[0] if err.args else err}") from err
    pipe.budget = budget
    return pipe


def _default_pipeline(args: argparse.Namespace) -> str:
    # The KV path's own spec keeps query-aware text compression out of the chunk cache, so
    # that chunks are reused across questions.
    from ragcompress.pipeline.core import pipeline_names

    return "kv-cached" if getattr(args, "kv", False) and "kv-cached" in pipeline_names() else "text-only"


def _json_arg(flag: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        if value.replace("-", "").replace("_", "").isalnum():
            return {"name": value}  # a bare method name
        raise UsageError(f"{flag}: not valid JSON: {value!r}") from None


# -- output --------------------------------------------------------------------------------
def _emit(result: PipelineResult, args: argparse.Namespace, extra: dict[str, Any]) -> None:
    record = {**result.as_dict(), **extra}
    if args.json:
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


# -- subcommands -----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from ragcompress.corpus import load_passages, load_questions

    questions = load_questions()
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    pipe = _load_pipeline(args)
    passages = load_passages()
    _log(f"indexing {len(passages)} bundled passages with FAISS")
    pipe.index(passages)
    correct = 0
    chosen = questions[: args.limit]
    for q in chosen:
        result = pipe.run(q.question, max_new_tokens=args.max_new_tokens)
        hit = q.answer.lower() in result.answer.lower()
        correct += hit
        _emit(
            result, args, {"id": q.id, "gold": q.answer, "gold_passage": q.passage_id, "gold_in_answer": hit}
        )
    _log(f"{correct}/{len(chosen)} answers contain the gold answer")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from ragcompress.corpus import load_documents

    if not args.question.strip():
        raise UsageError("the question is empty")
    if args.index:
        from ragcompress.retrieve import FaissRetriever

        retriever = FaissRetriever.load(args.index)
        pipe = _load_pipeline(args)
        pipe.retriever = retriever
    else:
        docs = load_documents(args.docs)  # before loading models: bad input fails fast
        pipe = _load_pipeline(args)
        _log(f"indexing {len(docs)} passages from {args.docs}")
        pipe.index(docs)
    _emit(pipe.run(args.question, max_new_tokens=args.max_new_tokens), args, {})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    return run_bench(args.name, list(args.rest))


def run_bench(name: str, argv: list[str], package: str = "ragcompress_bench") -> int:
    """Import ``<package>.<name>`` and return its ``main(argv)``."""
    module = f"{package}.{name}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise UsageError(f"benchmark {name!r} is not available: no module {module}") from err
        raise
    try:
        return int(mod.main(argv) or 0)
    except SystemExit as stop:
        if isinstance(stop.code, str):  # a benchmark's `raise SystemExit("--limit must be ...")`
            raise UsageError(stop.code) from None
        raise


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragcompress",
        formatter_class=_F,
        description=_wrap(
            "Context compression for retrieval-augmented generation: retrieve, compress "
            "the passages, answer with a local reader."
        ),
        epilog="examples:\n  ragcompress demo\n  ragcompress demo --json --limit 5\n"
        "  ragcompress ask 'Who founded X?' --docs notes/\n  ragcompress index notes/ --out notes.idx\n"
        "  ragcompress models\n\nRun `ragcompress COMMAND --help` for each command's options.",
    )
    from ragcompress import __version__

    parser.add_argument("--version", action="version", version=f"ragcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        formatter_class=_F,
        help="answer bundled questions over a bundled Wikipedia corpus",
        description=_wrap(
            "Index the bundled corpus (45 SQuAD passages on 5 Wikipedia articles) with FAISS, "
            "answer bundled questions, and print for each the answer, the gold answer, the "
            "passages kept, tokens before → after, the compression ratio (before / after) and latency."
        ),
        epilog="examples:\n  ragcompress demo\n  ragcompress demo --json --limit 10\n"
        '  ragcompress demo --compressor \'{"name": "tokens", "ratio": 0.4}\'\n'
        "  ragcompress demo --compressor none --k 2\n  ragcompress demo --pipeline my.yaml --ratio 0.3\n"
        "  ragcompress demo --kv --cache-dir /tmp/chunks --json   # twice: the 2nd run encodes nothing",
    )
    demo.add_argument(
        "--limit", type=int, default=3, metavar="N", help="questions to answer (1-10, default 3)"
    )
    _add_pipeline_args(demo, kv=True)
    demo.set_defaults(func=cmd_demo)

    ask = sub.add_parser(
        "ask",
        formatter_class=_F,
        help="answer a question over your own documents",
        description=_wrap(
            "Answer QUESTION from your documents: a .txt/.md/.jsonl file or a folder of them "
            '(.txt/.md split into passages at blank lines; .jsonl: one {"text": ...} per line), '
            "or an index saved by `ragcompress index`."
        ),
        epilog="examples:\n  ragcompress ask 'What is the Lorelei?' --docs notes.md\n"
        "  ragcompress ask 'When was it founded?' --docs docs/ --k 6 --ratio 0.3 --json\n"
        "  ragcompress ask 'Who wrote it?' --index notes.idx --kv",
    )
    ask.add_argument("question", help="the question to answer")
    src = ask.add_mutually_exclusive_group(required=True)
    src.add_argument("--docs", metavar="FILE_OR_DIR", help="documents to index for this question")
    src.add_argument("--index", metavar="INDEX", help="a folder written by `ragcompress index`")
    _add_pipeline_args(ask, kv=True)
    ask.set_defaults(func=cmd_ask)

    from ragcompress.cli.index import add_index_parser

    add_index_parser(sub, _F)

    bench = sub.add_parser(
        "bench",
        formatter_class=_F,
        help="run a benchmark (text, kv, ttft)",
        description=_wrap(
            "Run a benchmark module ragcompress_bench.NAME; arguments after NAME go to it "
            "(`ragcompress bench NAME --help` shows them)."
        ),
        epilog="examples:\n  ragcompress bench text --help\n  ragcompress bench ttft",
    )
    bench.add_argument("name", choices=BENCHES, help="which benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=cmd_bench)

    from ragcompress.cli.models import add_models_parser

    add_models_parser(sub, _F)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _quiet_libraries()
    from ragcompress.cli.errors import DEBUG_ENV, error_line, expected

    try:
        return int(args.func(args))
    except BrokenPipeError:  # `ragcompress demo --json | head -1`
        return 0
    except Exception as err:
        if not expected(err) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"ragcompress {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2

