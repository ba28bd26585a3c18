"""The pipeline flags that ``demo`` and ``ask`` share, and the spec they make.

The flags build the same :class:`~ragcompress.pipeline.spec.PipelineSpec` that a YAML file and
Python callers build: the ``--pipeline`` file is read and checked first, then each flag is laid
over it with :func:`~ragcompress.pipeline.spec.overlay`, so that a bad value is reported as an
error of its flag (``--compressor: unknown method 'sentencez'; text compressors: ...``) and a bad
file as an error of the file (``my.yaml: kv.cache_dirr: unknown key``).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING, Any

from ragcompress.cli.common import UsageError, log

if TYPE_CHECKING:
    from ragcompress.pipeline.core import Pipeline
    from ragcompress.pipeline.spec import PipelineSpec
    from ragcompress.sampling import Sampling

__all__ = [
    "KV_FLAGS",
    "SAMPLING_FLAGS",
    "add_pipeline_args",
    "load_pipeline",
    "method_arg",
    "sampling_from_args",
    "spec_from_args",
]

# Sampling field → its flag (errors name the flag)
SAMPLING_FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k",
                  "seed": "--seed", "stop": "--stop"}  # fmt: skip

# flag → (argparse dest, key in the spec's kv section)
KV_FLAGS = {
    "--cache-dir": ("cache_dir", "cache_dir"),
    "--press": ("press", "presses"),
    "--store": ("store", "store"),
    "--fast-capacity": ("fast_capacity", "fast_capacity"),
    "--fast-placement": ("fast_placement", "fast_placement"),
    "--fast-batch": ("fast_batch", "fast_batch"),
    "--assembly": ("assembly", "assembly"),
}


def add_pipeline_args(p: argparse.ArgumentParser, kv: bool = False) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument(
        "--pipeline",
        metavar="NAME|PATH",
        help="ready spec name (see `ragcompress models`) or a YAML file "
        "(default: text-only; kv-cached with --kv)",
    )
    g.add_argument(
        "--compressor",
        metavar="SPEC",
        help='replace the spec\'s compressors: a name, a JSON spec such as \'{"name": "tokens", '
        "\"ratio\": 0.4}', a JSON list of specs (a chain), or 'none'",
    )
    g.add_argument(
        "--ratio",
        type=float,
        metavar="R",
        help="share of context tokens to keep, in (0, 1]; overrides the compressors' own (spec: ratio)",
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
        _add_kv_args(g)
    _add_sampling_args(p.add_argument_group("generation"))


def _add_sampling_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        metavar="T",
        help="sampling temperature; 0 (the default) decodes greedily",
    )
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass in (0, 1]")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest (0: all)")
    g.add_argument("--seed", type=int, metavar="N", help="seed for sampling: the same seed, the same answer")
    g.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end the answer at TEXT (repeatable; \\n and \\t are read as newline and tab)",
    )
    g.add_argument(
        "--no-stream",
        action="store_true",
        help="print each answer when it is complete instead of as it is generated (--json never streams)",
    )


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The :class:`~ragcompress.sampling.Sampling` the generation flags describe; a bad value is a
    :class:`UsageError` naming its flag (checked before any model loads)."""
    from ragcompress.sampling import Sampling

    stop = tuple(_unescape(s) for s in (args.stop or ()))
    try:
        return Sampling(args.temperature, args.top_p, args.top_k, args.seed, stop)
    except (TypeError, ValueError) as err:
        msg = str(err)
        for field, flag in SAMPLING_FLAGS.items():
            if f"Sampling.{field}" in msg:
                raise UsageError(msg.replace(f"Sampling.{field}", flag)) from None
        raise UsageError(msg) from None


def _unescape(text: str) -> str:
    # A shell passes `--stop '\n'` as a backslash and an n: read \n, \t and \\ as escapes.
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t"}.get(m[1], "\\"), text)


def _add_kv_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--kv",
        action="store_true",
        help="answer from cached KV chunks (the KV path) instead of prefilling text",
    )
    g.add_argument("--cache-dir", metavar="DIR", help="with --kv: keep chunks on disk here too")
    g.add_argument(
        "--press",
        metavar="SPEC",
        help="with --kv: KV press(es) for chunks: a name, or JSON such as "
        '\'{"name": "quantize", "bits": 8}\'',
    )
    g.add_argument(
        "--store",
        metavar="URL|JSON",
        help="with --kv: chunk store URL (memory://, file:///dir, redis://…; like the JSON naming "
        "it, with a memory tier of kv.memory_bytes, 2 GiB, in front), or a tiered store as JSON "
        '(\'{"gpu_bytes": 2147483648, "disk_dir": "~/chunks", "redis_url": "redis://host:6379/0"}\')',
    )
    g.add_argument(
        "--assembly",
        metavar="SPEC",
        help='with --kv: how chunks are assembled, e.g. \'{"name": "blend", "recompute": 0.15}\' '
        "(recompute the tokens whose values deviate most), blend_question (the tokens the question's "
        "last tokens attend to most; field last_tokens), blend_link (those, with later passages' "
        "sentences sharing a name with its top sentences first; field top_sentences) or ape "
        "(default concat; spec: kv.assembly)",
    )
    g.add_argument(
        "--fast-capacity",
        metavar="TOKENS",
        type=int,
        help="with --kv: answer on the fast engine (one static KV buffer of this many context "
        "tokens; CUDA graphs and flash attention on a GPU) instead of transformers' forward",
    )
    g.add_argument(
        "--fast-placement",
        metavar="SPEC",
        help="with --fast-capacity: how the fast engine places chunks: copy (default: into the "
        "request's buffer), paged (read in place from a paged GPU pool), or JSON such as "
        '\'{"name": "paged", "pool_tokens": 262144, "storage": "int4"}\' (int4: the pool keeps chunks '
        "in int4 (or int8), dequantized in the attention kernel; spec: kv.fast_placement)",
    )
    g.add_argument(
        "--fast-batch",
        metavar="N",
        type=int,
        help="with --fast-capacity: questions answered together, greedily (demo); on the paged "
        "placement N questions share one step, each over its own passages (spec: kv.fast_batch)",
    )


def method_arg(flag: str, value: str) -> Any:
    """A method spec given on the command line: JSON (a spec or a list of them) or a bare name."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        if value.replace("-", "").replace("_", "").isalnum():
            return {"name": value}
        raise UsageError(f"{flag}: not valid JSON, nor a method name: {value!r}") from None


def spec_from_args(args: argparse.Namespace) -> PipelineSpec:
    """The ``--pipeline`` spec with every given flag laid over it (each checked, naming its flag)."""
    from ragcompress.pipeline.core import find_pipeline
    from ragcompress.pipeline.spec import load_spec, overlay

    path = find_pipeline(args.pipeline or _default_pipeline(args))
    log(f"loading pipeline {path.stem} ({path})")
    spec = load_spec(path)
    for flag, key, value in (
        ("--reader", "generator.model", args.reader),
        ("--dtype", "generator.dtype", args.dtype),
        ("--max-new-tokens", "generator.max_new_tokens", args.max_new_tokens),
        ("--k", "retriever.k", args.k),
        ("--ratio", "ratio", args.ratio),
    ):
        if value is not None:
            spec = overlay(spec, key, value, flag)
    if args.compressor is not None:
        none = args.compressor.strip().lower() == "none"
        spec = overlay(
            spec, "compressors", [] if none else method_arg("--compressor", args.compressor), "--compressor"
        )
    return _kv_flags(spec, args)


def _kv_flags(spec: PipelineSpec, args: argparse.Namespace) -> PipelineSpec:
    from ragcompress.pipeline.spec import overlay

    given = [flag for flag, (dest, _) in KV_FLAGS.items() if getattr(args, dest, None) is not None]
    if not getattr(args, "kv", False):
        if given:
            raise UsageError(f"{', '.join(given)}: only apply with --kv")
        return spec
    if args.store is not None and args.cache_dir is not None:
        raise UsageError("give --store URL or --cache-dir DIR, not both (file:///DIR is a disk store)")
    if spec.kv is None:
        spec = overlay(spec, "kv", {}, "--kv")
    if args.store is not None:  # an explicit --store replaces the spec's storage, its cache_dir too
        spec = overlay(spec, "kv.cache_dir", None, "--store")
    for flag in given:
        dest, key = KV_FLAGS[flag]
        value = getattr(args, dest)
        if flag in ("--press", "--assembly"):
            value = method_arg(flag, value)
        elif flag in ("--store", "--fast-placement") and value.lstrip().startswith("{"):  # settings
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise UsageError(f"{flag}: not valid JSON: {err}") from None
        spec = overlay(spec, f"kv.{key}", value, flag)
    return spec


def _default_pipeline(args: argparse.Namespace) -> str:
    # The KV path's own spec keeps query-aware text compression out of the chunk cache, so
    # that chunks are reused across questions.
    from ragcompress.pipeline.core import pipeline_names

    return "kv-cached" if getattr(args, "kv", False) and "kv-cached" in pipeline_names() else "text-only"


def load_pipeline(args: argparse.Namespace) -> Pipeline:
    """The pipeline the flags describe (loads the reader)."""
    from ragcompress.pipeline.core import Pipeline

    return Pipeline.build(spec_from_args(args))
