"""The benchmark's unit of work and the retrieval setting built around it."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragcompress.types import Passage

__all__ = ["KINDS", "QAExample", "RawQA", "retrieval_setting"]

# "extractive": the answer is a span of the gold passage (EM/F1 apply, containment is meaningful);
# "yesno": the answer is yes/no (or maybe); "abstractive": free-form answers (F1 only).
KINDS = ("extractive", "yesno", "abstractive")


@dataclass(frozen=True, slots=True)
class RawQA:
    """One question over one passage, as a dataset ships it (before distractors are added)."""

    question: str
    passage: str
    answers: tuple[str, ...]
    kind: str
    source_id: str  # dataset name + row, so every example can be traced back to the file


@dataclass(frozen=True, slots=True)
class QAExample:
    """A question, its retrieved passages (gold + distractors, shuffled) and the gold answers."""

    question: str
    passages: list[Passage]
    gold_passage_id: str
    answers: list[str]
    kind: str
    id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"example {self.id!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.answers:
            raise ValueError(f"example {self.id!r} has no gold answer")
        if self.gold_passage_id not in {p.id for p in self.passages}:
            raise ValueError(
                f"example {self.id!r}: gold passage {self.gold_passage_id!r} is not among its passages"
            )

    @property
    def gold_passage(self) -> Passage:
        return next(p for p in self.passages if p.id == self.gold_passage_id)


def retrieval_setting(
    rows: Sequence[RawQA], k: int, seed: int, limit: int | None, dataset: str
) -> list[QAExample]:
    """For each row: its gold passage plus ``k - 1`` passages of *other* questions, shuffled.

    Passages get stable ids (``dataset:p<n>`` by first appearance), so the same text has the same
    id in every example. Distractors never share the gold passage's text (several questions may
    ask about one passage). Deterministic for a given ``seed``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    texts: dict[str, str] = {}
    for row in rows:
        texts.setdefault(row.passage, f"{dataset}:p{len(texts)}")
    pool = list(texts)
    if k > len(pool):
        raise ValueError(f"{dataset}: k={k} needs {k} distinct passages, the data has {len(pool)}")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    out: list[QAExample] = []
    for i in order[: limit if limit is not None else len(order)]:
        row = rows[i]
        distractors: list[str] = []
        seen = {row.passage}
        while len(distractors) < k - 1:
            cand = pool[rng.randrange(len(pool))]
            if cand not in seen:
                seen.add(cand)
                distractors.append(cand)
        chosen = [row.passage, *distractors]
        rng.shuffle(chosen)
        passages = [
            Passage(text=t, id=texts[t], metadata={"gold": t == row.passage, "dataset": dataset})
            for t in chosen
        ]
        out.append(
            QAExample(
                question=row.question,
                passages=passages,
                gold_passage_id=texts[row.passage],
                answers=list(row.answers),
                kind=row.kind,
                id=row.source_id,
            )
        )
    return out
