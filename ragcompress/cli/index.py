"""``ragcompress index``: build a FAISS index and/or pre-encode KV chunks into a chunk store."""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from typing import Any

from ragcompress.cli.common import UsageError, log
from ragcompress.cli.pipeline_args import method_arg

__all__ = ["add_index_parser", "cmd_index"]


def add_index_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    index: argparse.ArgumentParser = sub.add_parser(
        "index",
        formatter_class=formatter,
        help="index documents: a FAISS index (--out) and/or KV chunks in a store (--store)",
        description=textwrap.fill(
            "Read the passages of DOCS (.txt/.md/.jsonl files, recursively). With --out, embed "
            "them and save a FAISS index (index.faiss + passages.json, no pickle) that `ask "
            "--index` reopens. With --store, prefill every passage once into a KV chunk (pressed "
            "with --press) and write it to the chunk store, so that generators pointing at the "
            "same store answer from cached chunks from the first question on. Re-running skips "
            "chunks the store already holds intact (idempotent, resumable) and re-encodes damaged "
            "ones. --ray spreads encoding over "
            "a Ray cluster (one actor per GPU, CPU workers otherwise).",
            width=88,
        ),
        epilog="examples:\n  ragcompress index notes/ --out notes.idx\n"
        "  ragcompress ask 'Who?' --index notes.idx\n"
        "  ragcompress index notes/ --store redis://localhost:6379/0 --json\n"
        "  ragcompress index notes/ --store file:///data/chunks "
        '--press \'{"name": "quantize", "bits": 4}\'\n'
        "  ragcompress index notes/ --store redis://redis:6379/0 --ray auto\n"
        "  ragcompress demo --kv --store redis://localhost:6379/0",
    )
    index.add_argument("docs", metavar="DOCS", help="a file or a folder of .txt/.md/.jsonl files")
    index.add_argument("--out", metavar="INDEX", help="folder to write a FAISS index into")
    index.add_argument(
        "--embedder", metavar="MODEL", help="sentence-transformers model (default: all-minilm-l6-v2)"
    )
    kv = index.add_argument_group("KV chunks")
    kv.add_argument(
        "--store", metavar="URL", help="chunk store: redis://HOST:PORT/DB, rediss://…, file:///DIR or DIR"
    )
    kv.add_argument("--model", metavar="MODEL", help="reader whose KV is stored (default: packaged SmolLM2)")
    kv.add_argument(
        "--press", metavar="SPEC", help="KV press(es) applied before storing: a name, a JSON spec or a list"
    )
    kv.add_argument("--ray", metavar="ADDRESS", help="Ray address ('local', 'auto', 'ray://head:10001')")
    kv.add_argument("--tenant", metavar="NAME", help="tenant namespace in a shared store")
    kv.add_argument("--batch-size", type=int, default=16, metavar="N", help="passages per encoding batch")
    index.add_argument("--json", action="store_true", help="print a JSON summary object on stdout")
    index.set_defaults(func=cmd_index)
    return index


def cmd_index(args: argparse.Namespace) -> int:
    if not args.out and not args.store:
        raise UsageError("give --out INDEX (FAISS index), --store URL (KV chunks), or both")
    summary: dict[str, Any] = {}
    if args.out:
        summary.update(_faiss(args))
    if args.store:
        summary.update(_chunks(args))
    if args.json:
        print(json.dumps(summary))
    return 0


def _faiss(args: argparse.Namespace) -> dict[str, Any]:
    from ragcompress.corpus import load_documents
    from ragcompress.retrieve import FaissRetriever

    docs = load_documents(args.docs)
    start = time.perf_counter()
    log(f"embedding {len(docs)} passages")
    retriever = FaissRetriever.from_passages(docs, embedder=args.embedder)
    out = retriever.save(args.out)
    seconds = time.perf_counter() - start
    if not args.json:
        print(f"indexed {len(docs)} passages from {args.docs} into {out} in {seconds:.1f} s")
    return {"index": str(out), "passages": len(docs), "index_seconds": seconds}


def _chunks(args: argparse.Namespace) -> dict[str, Any]:
    from ragcompress.kv.index import index_corpus
    from ragcompress.kv.store.open import StoreUnavailableError
    from ragcompress.pipeline.spec import check_methods

    # checked as the spec's kv.presses are (a name or JSON; a text compressor fails naming both kinds)
    presses = list(check_methods(method_arg("--press", args.press), "press", "--press")) if args.press else []
    try:
        s = index_corpus(
            args.docs,
            args.store,
            model=args.model,
            presses=presses,
            ray_address=args.ray,
            batch_size=args.batch_size,
            tenant=args.tenant,
            progress=not args.json,
        )
    except StoreUnavailableError as err:
        raise UsageError(f"chunk store unavailable: {err}") from err
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(str(err.args[0] if err.args else err)) from err
    if not args.json:
        print(
            f"encoded {s.encoded}, skipped {s.skipped} already stored, of {s.passages} passages "
            f"into {s.store} in {s.seconds:.1f} s"
        )
    return s.as_dict()
