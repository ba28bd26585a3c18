"""A kept sentence that leans on an earlier one ("It flows…") keeps its antecedent, in budget."""

from __future__ import annotations

import pytest

from ragcompress import Budget, Passage
from ragcompress.text.referents import antecedent_groups, leans_back
from ragcompress.text.select import keep_best
from ragcompress.text.sentences import SentenceSelector

RHINE = "The Rhine rises in the Swiss Alps. It flows 1,230 km to the North Sea."
OTHER = Passage("The Danube is 2,850 km long. Vienna has many coffee houses.", id="danube")
MARS = (
    "Mars is the fourth planet from the Sun. Its surface is red with iron oxide. "
    "It has two small moons. Jupiter has many moons, some of them small."
)


def _selector(embedder, **kw) -> SentenceSelector:
    return SentenceSelector(**kw).use_embedder(embedder, "all-minilm-l6-v2")  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("sentence", "language", "expected"),
    [
        ("It flows north.", "en", True),
        (" “They said so.”", "en", True),
        ("These moons are small.", "en", True),
        ("Its surface is red.", "en", True),
        ("Items are sold.", "en", False),  # a prefix of a referring word is not one
        ("The Rhine rises.", "en", False),
        ("Sie fließt nach Norden.", "de", True),
        ("Es fließt nach Norden.", "en", False),  # the English table does not hold German words
        ("It flows.", "zh", False),  # no table: never links
    ],
)
def test_leans_back(sentence, language, expected):
    assert leans_back(sentence, language) is expected


def test_antecedent_is_the_nearest_sentence_that_names_the_subject():
    segs = ["Mars is red.", " Its soil holds iron.", " It has two moons.", " Jupiter is big."]
    assert antecedent_groups(segs, 3, "en") == [(0,), (0, 1), (0, 2), (3,)]
    assert antecedent_groups(segs, 1, "en") == [(0,), (0, 1), (1, 2), (3,)]  # reach bounded
    assert antecedent_groups(segs, 0, "en") == [(0,), (1,), (2,), (3,)]
    with pytest.raises(ValueError, match="referent_window"):
        antecedent_groups(segs, -1, "en")


def test_rhine_keeps_both_sentences_when_both_fit(embedder):
    sel = _selector(embedder)
    passages = [Passage(RHINE, id="rhine", metadata={"source": "wiki"}, score=0.8), OTHER]
    budget = sel._counter(RHINE) + 1
    out = sel.compress(passages, "How long is the Rhine?", Budget(tokens=budget))
    rhine = next(p for p in out if p.id == "rhine")
    assert rhine.text == RHINE
    assert rhine.metadata["source"] == "wiki" and rhine.score == 0.8
    assert sum(p.metadata["ragcompress"]["tokens_after"] for p in out) <= budget


def test_a_leaning_answer_keeps_the_sentence_naming_its_subject(embedder):
    sel = _selector(embedder)
    budget = sel._counter("Mars is the fourth planet from the Sun. It has two small moons.") + 1
    out = sel.compress([Passage(MARS, id="mars")], "Which planet has two small moons?", Budget(tokens=budget))
    assert [p.id for p in out] == ["mars"]
    assert "two small moons" in out[0].text and "Mars" in out[0].text
    assert out[0].metadata["ragcompress"]["tokens_after"] <= budget


def test_window_zero_keeps_sentences_alone(embedder):
    budget = (
        _selector(embedder)._counter("Mars is the fourth planet from the Sun. It has two small moons.") + 1
    )
    out = _selector(embedder, referent_window=0).compress([MARS], "Which planet has two small moons?", budget)
    assert "two small moons" in out[0].text and "Mars" not in out[0].text


def test_a_leaning_sentence_is_never_kept_without_its_antecedent(embedder):
    counter = _selector(embedder)._counter
    segments = [["Mars is the fourth planet from the Sun.", " It has two small moons."], ["Phobos is small."]]
    passages = [Passage("".join(s), id=f"p{i}") for i, s in enumerate(segments)]
    scores = [[0.1, 0.8], [0.9]]  # the leaning sentence ranks second, not first
    groups = [[(0,), (0, 1)], [(0,)]]
    # Room for "Phobos…" and the lone "It has…", not for "Phobos…" and the pair.
    budget = counter("Phobos is small.") + counter(" It has two small moons.") + 1
    assert budget < counter("Phobos is small.") + counter(passages[0].text)
    tokens = counter.many([p.text for p in passages])
    out = keep_best(passages, segments, scores, budget, counter, tokens, groups=groups)
    assert [(p.id, p.text) for p in out] == [("p1", "Phobos is small.")]
    # Without groups the lone leaning sentence is kept: the rule is what drops it.
    out = keep_best(passages, segments, scores, budget, counter, tokens)
    assert [p.text for p in out] == ["It has two small moons.", "Phobos is small."]


def test_the_best_sentence_is_kept_alone_when_its_pair_cannot_fit(embedder):
    sel = _selector(embedder)
    tight = sel._counter("It has two small moons.")
    out = sel.compress([MARS], "Which planet has two small moons?", Budget(tokens=tight))
    assert out[0].text == "It has two small moons."
    assert out[0].metadata["ragcompress"]["tokens_after"] <= tight


def test_negative_window_names_the_field():
    with pytest.raises(ValueError, match="referent_window"):
        SentenceSelector(referent_window=-1)
