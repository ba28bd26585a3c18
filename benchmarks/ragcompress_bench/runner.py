"""Run contenders side by side on the same examples with one reader, and summarize.

Contender-major order: each contender is set up once and then sees every example, so its peak
memory is measured while it alone runs. ``none`` (no compression) runs first: its greedy answers
are the reference for agreement.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ragcompress_bench import metrics as M
from ragcompress_bench.contender import Contender, Unavailable
from ragcompress_bench.data import QAExample
from ragcompress_bench.reader import read

if TYPE_CHECKING:
    from ragcompress.generate import Generator

__all__ = ["PeakMemory", "run_contenders"]


class PeakMemory:
    """Peak memory while a block runs: process RSS sampled every ``interval`` s (CPU), or
    ``torch.cuda.max_memory_allocated`` when the reader is on a GPU. In MB."""

    def __init__(self, cuda: bool, interval: float = 0.02) -> None:
        self.cuda, self.interval, self.peak = cuda, interval, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_mb() -> float:
        try:
            import psutil

            return float(psutil.Process().memory_info().rss) / 2**20
        except ImportError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self.peak, self._rss_mb())


def _score(ex: QAExample, answer: str) -> dict[str, float | None]:
    if ex.kind == "yesno":
        return {"em": None, "f1": None, "accuracy": M.yesno_accuracy(answer, ex.answers)}
    if ex.kind == "abstractive":
        return {"em": None, "f1": M.token_f1(answer, ex.answers), "accuracy": None}
    return {"em": M.exact_match(answer, ex.answers), "f1": M.token_f1(answer, ex.answers), "accuracy": None}


def _summary(rows: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    before = sum(r["tokens_before"] for r in rows)
    after = sum(r["tokens_after"] for r in rows)
    out: dict[str, Any] = {"n": len(rows), "ratio": M.compression_ratio(before, after), "peak_mb": peak}
    for key in ("survives", "em", "f1", "accuracy", "agreement", "gold_ll", "latency_ms", "ttft_ms"):
        out[key] = M.mean(None if r[key] is None else float(r[key]) for r in rows)
    return out


def run_contenders(
    examples: Sequence[QAExample],
    contenders: Sequence[Contender],
    gen: Generator,
    max_new_tokens: int = 12,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(one summary row per contender, one row per contender × example)``."""
    from tqdm.auto import tqdm

    tok = gen.tokenizer

    def count(texts: Sequence[str]) -> int:
        if not texts:
            return 0
        return sum(len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"])

    before = {ex.id: count([p.text for p in ex.passages]) for ex in examples}
    reference: dict[str, str] = {}
    ordered = sorted(contenders, key=lambda c: c.name != "none")
    cuda = gen.lm.device.type == "cuda"
    bar = tqdm(total=len(ordered) * len(examples), disable=not progress, desc="bench text", unit="run")
    summaries: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for c in ordered:
        row: dict[str, Any] = {"name": c.name, "label": c.label, "target": c.target, "version": c.version}
        bar.set_postfix_str(c.label)
        try:
            c.setup()
        except Unavailable as err:
            row["unavailable"] = str(err)
            summaries.append(row)
            bar.update(len(examples))
            continue
        row["describe"] = c.describe()
        done: list[dict[str, Any]] = []
        errors: list[str] = []
        with PeakMemory(cuda) as mem:
            for ex in examples:
                bar.update(1)
                try:
                    start = time.perf_counter()
                    kept = c.compress(ex)
                    latency = (time.perf_counter() - start) * 1e3
                    res = read(gen, ex.question, kept, ex.answers[0], max_new_tokens)
                except Exception as err:  # one failing example must not hide the others' numbers
                    errors.append(f"{ex.id}: {type(err).__name__}: {err}")
                    continue
                context = "\n".join(p.text for p in kept)
                if c.name == "none":
                    reference[ex.id] = res.answer
                ref = reference.get(ex.id)
                r = {
                    "contender": c.label,
                    "example": ex.id,
                    "kind": ex.kind,
                    "tokens_before": before[ex.id],
                    "tokens_after": count([p.text for p in kept]),
                    "latency_ms": latency,
                    "survives": None if ex.kind == "yesno" else M.answer_survives(context, ex.answers),
                    "answer": res.answer,
                    "gold": ex.answers,
                    "agreement": None if ref is None else M.answers_agree(res.answer, ref),
                    "gold_ll": res.gold_logprob,
                    "ttft_ms": res.ttft_ms,
                    "prompt_tokens": res.prompt_tokens,
                    "gold_passage_kept": any(p.id == ex.gold_passage_id for p in kept),
                    **_score(ex, res.answer),
                }
                done.append(r)
        details.extend(done)
        if errors:
            row["errors"], row["first_error"] = len(errors), errors[0][:300]
            row["error_list"] = errors
        if done:
            row["summary"] = _summary(done, mem.peak)
        else:
            row["unavailable"] = "every example failed: " + (errors[0] if errors else "no examples")
        summaries.append(row)
    bar.close()
    for row in summaries:
        s = row.get("summary")
        if s and isinstance(s.get("ratio"), float) and math.isinf(s["ratio"]):
            row.setdefault("note", "nothing kept")
    return summaries, details
