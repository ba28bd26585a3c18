"""'random': the seeded baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ragcompress import Budget, Passage
from ragcompress.text.base import TextCompressor
from ragcompress.text.random_drop import RandomDrop
from ragcompress.text.split import segment_texts, split_sentences
from ragcompress.types import STATS_KEY

TEXT = " ".join(f"Sentence number {i} is here." for i in range(40))


def test_seed_fixes_the_draw_and_changes_it():
    a = RandomDrop(seed=1).compress([TEXT], "", 0.5)[0].text
    assert a == RandomDrop(seed=1).compress([TEXT], "", 0.5)[0].text
    assert a != RandomDrop(seed=2).compress([TEXT], "", 0.5)[0].text


def test_kept_sentences_are_input_sentences_in_order():
    out = RandomDrop(seed=5).compress([TEXT], "", 0.3)[0]
    kept = [s + "." for s in out.text.split(".") if s.strip()]
    numbers = [int(s.split()[2]) for s in kept]
    assert numbers == sorted(numbers) and all(s.strip() in TEXT for s in kept)


def test_a_million_character_passage_holds_the_budget():
    text = " ".join(f"Line {i} of a very long log file." for i in range(40000))
    assert len(text) > 1_000_000
    res = RandomDrop().compress_with_stats([Passage(text)], "", Budget(tokens=500))
    assert 0 < res.stats.tokens_after <= 500


def test_several_passages_share_one_budget_and_emptied_ones_say_why():
    passages = [Passage(TEXT, id=f"p{i}") for i in range(3)]
    res = RandomDrop(seed=3).compress_with_stats(passages, "", Budget(tokens=10))  # room for one sentence
    assert 0 < res.stats.tokens_after <= 10
    kept = {p.id for p in res.passages}
    assert kept and kept < {"p0", "p1", "p2"}
    assert {pid: res.stats.dropped[pid] for pid in {"p0", "p1", "p2"} - kept} == dict.fromkeys(
        {"p0", "p1", "p2"} - kept, "no sentence kept within the budget"
    )


@dataclass
class _Longest(TextCompressor):
    """A new extractive method only scores its segments: the base's ``_keep_best`` does the rest."""

    registered_name: ClassVar[str] = "test-longest"

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        segments = [segment_texts(p.text, split_sentences(p.text)) for p in passages]
        scores = [[float(len(s)) for s in segs] for segs in segments]
        excluded = [[s.strip().startswith("Skip") for s in segs] for segs in segments]
        return self._keep_best(passages, segments, scores, budget, tokens, excluded=excluded)


def test_keep_best_helper_keeps_the_best_in_order_within_the_budget():
    text = "Tiny. A much longer sentence than the others here. Skip this long sentence entirely now. Mid one."
    out = _Longest().compress_with_stats([Passage(text, id="a"), Passage("Skip me.", id="b")], "", 0.5)
    assert [p.id for p in out.passages] == ["a"]
    assert out.passages[0].text.startswith("A much longer sentence")
    assert "Skip" not in out.passages[0].text
    assert out.passages[0].metadata[STATS_KEY]["total_sentences"] == 4
    assert out.stats.dropped == {"b": "every sentence excluded"}
