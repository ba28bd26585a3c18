"""'random': the seeded baseline."""

from __future__ import annotations

from ragcompress import Budget, Passage
from ragcompress.text.random_drop import RandomDrop

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
