"""Paired bootstrap intervals for ``ragcompress bench fidelity``'s ratio and Δ columns.

A row's ``F1 / full`` is a ratio of two means over the same questions, and a 1.5B reader that is
right on 40% of two-hop questions flips whole answers on small changes: at 50 questions one
answer moves the ratio by several points. Each row therefore carries a 95% interval obtained by
resampling its *questions* (the same resample for the contender and the full prefill: the
comparison is paired), so a reader of the table can tell a gap from noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragcompress_bench.metrics import contains_answer, token_f1

__all__ = ["RESAMPLES", "paired_intervals"]

RESAMPLES = 2000
LEVEL = 0.95


def paired_intervals(
    rs: Sequence[dict[str, Any]],
    full: dict[tuple[str, str], dict[str, Any]],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """``f1_ratio_ci``, ``gold_in_ratio_ci`` and ``delta_ll_ci``: [low, high] percentile
    intervals (95%) of F1 / full F1, gold-in / full gold-in and the mean gold log-likelihood
    difference, over ``resamples`` bootstrap draws of the questions ``rs`` shares with ``full``
    (keyed by (dataset, example)). None where fewer than two questions pair up, or (ratios)
    where the full prefill scores 0 in too many draws to say anything."""
    import numpy as np

    pairs = [(r, full[r["dataset"], r["example"]]) for r in rs if (r["dataset"], r["example"]) in full]
    out: dict[str, list[float] | None] = dict.fromkeys(("f1_ratio_ci", "gold_in_ratio_ci", "delta_ll_ci"))
    if len(pairs) < 2:
        return out
    # (questions, 2) per metric: the contender's score, the full prefill's
    f1, gold = (
        np.array([[float(score(x["text"], x["answers"])) for x in pair] for pair in pairs], dtype=float)
        for score in (token_f1, contains_answer)
    )
    dll = np.array([r["gold_ll"] - f["gold_ll"] for r, f in pairs])
    idx = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    tails = [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2]
    for key, values in (("f1_ratio_ci", f1), ("gold_in_ratio_ci", gold)):
        means = values[idx].mean(axis=1)  # (resamples, 2)
        ok = means[:, 1] > 0
        if ok.mean() >= LEVEL:  # a ratio needs the full prefill to score in (nearly) every draw
            out[key] = [float(v) for v in np.quantile(means[ok, 0] / means[ok, 1], tails)]
    out["delta_ll_ci"] = [float(v) for v in np.quantile(dll[idx].mean(axis=1), tails)]
    return out
