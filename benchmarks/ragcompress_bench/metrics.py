"""Answer and fidelity metrics. Pure functions over strings and numbers (no model here).

SQuAD normalization (lower case, drop punctuation and the articles a/an/the, collapse spaces)
is used by exact match, token F1, containment and answer agreement alike.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = [
    "answer_survives",
    "answers_agree",
    "compression_ratio",
    "exact_match",
    "mean",
    "normalize_answer",
    "token_f1",
    "yesno_accuracy",
    "yesno_label",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"‘", "’", "“", "”", "–", "—"}


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower, strip punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _first_answer(prediction: str) -> str:
    # Small readers often go on after the answer; the first line is what they answered.
    return prediction.strip().split("\n", 1)[0]


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized gold answer."""
    pred = normalize_answer(_first_answer(prediction))
    return float(any(pred == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best bag-of-tokens F1 of the prediction against the gold answers (SQuAD's F1)."""
    pred = normalize_answer(_first_answer(prediction)).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def yesno_label(prediction: str) -> str | None:
    """``yes`` / ``no`` / ``maybe`` when the answer opens with it (or with true/false), else None."""
    words = normalize_answer(_first_answer(prediction)).split()
    if not words:
        return None
    first = {"true": "yes", "false": "no"}.get(words[0], words[0])
    return first if first in {"yes", "no", "maybe"} else None


def yesno_accuracy(prediction: str, answers: Sequence[str]) -> float:
    label = yesno_label(prediction)
    return float(label is not None and label in {a.strip().lower() for a in answers})


def answer_survives(context: str, answers: Sequence[str]) -> bool:
    """Whether any gold answer still occurs (normalized) in the compressed context.

    Normalized containment on word boundaries, so "1,600" survives as "1600" would not be
    mistaken for part of "21600".
    """
    ctx = f" {normalize_answer(context)} "
    return any(norm and f" {norm} " in ctx for norm in (normalize_answer(a) for a in answers))


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if any gold answer occurs (normalized, on word boundaries) in the prediction's first
    line: the accuracy of readers that answer in a sentence ("The Osmel River runs through ..."),
    where token F1 against a one-word gold stays low even when the answer is right (as in Liu et
    al., "Lost in the Middle", 2024)."""
    return float(answer_survives(_first_answer(prediction), answers))


def answers_agree(a: str, b: str) -> bool:
    """Whether two greedy answers say the same thing after normalization (first line only)."""
    return normalize_answer(_first_answer(a)) == normalize_answer(_first_answer(b))


def compression_ratio(tokens_before: int, tokens_after: int) -> float:
    """``before / after`` (2.0 = half the tokens kept); inf when nothing is left of a non-empty input."""
    if tokens_after <= 0:
        return math.inf if tokens_before > 0 else 1.0
    return tokens_before / tokens_after


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None
