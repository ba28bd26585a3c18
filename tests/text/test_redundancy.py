"""'redundancy' and 'dedup-passages': near-duplicates go, distinct content stays."""

from __future__ import annotations

import numpy as np
import pytest

from ragcompress import Budget, Passage
from ragcompress.text.redundancy import PassageDeduplicator, RedundancyFilter, max_similarity_to_earlier


def _filter(embedder, **kw) -> RedundancyFilter:
    return RedundancyFilter(**kw).use_embedder(embedder, "all-minilm-l6-v2")  # type: ignore[return-value]


def test_max_similarity_to_earlier_matches_brute_force():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(37, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    got = max_similarity_to_earlier(v, block=5)
    want = [-1.0] + [max(float(v[i] @ v[j]) for j in range(i)) for i in range(1, len(v))]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_drops_an_exact_duplicate_and_keeps_distinct_sentences(embedder):
    a = Passage("Water boils at 100 degrees Celsius at sea level. Ice melts at zero degrees.", id="a")
    b = Passage("Copper conducts electricity well. Water boils at 100 degrees Celsius at sea level.", id="b")
    res = _filter(embedder).compress_with_stats([a, b])
    out = {p.id: p.text for p in res.passages}
    assert out["a"] == a.text  # the first occurrence stays
    assert out["b"] == "Copper conducts electricity well."
    assert res.passages[1].metadata["ragcompress"]["kept_sentences"] == 1


def test_passage_made_only_of_repeats_is_dropped_with_reason(embedder):
    a = Passage("Gold is a dense metal. Silver tarnishes in air.", id="a")
    b = Passage("Silver tarnishes in air. Gold is a dense metal.", id="b")
    res = _filter(embedder).compress_with_stats([a, b])
    assert [p.id for p in res.passages] == ["a"]
    assert "duplicates an earlier sentence" in res.stats.dropped["b"]


def test_tighter_budget_drops_the_most_redundant_first(embedder):
    text = (
        "The meeting is on Monday at noon. The meeting takes place on Monday at 12 o'clock. "
        "Bring your laptop."
    )
    res = _filter(embedder, threshold=0.99).compress_with_stats([text], "", 0.7)
    assert "laptop" in res.passages[0].text and "Monday" in res.passages[0].text
    assert res.stats.tokens_after <= Budget(ratio=0.7).target(res.stats.tokens_before)


def test_dedup_passages_names_the_original(embedder):
    a = Passage("The train to Lyon leaves at nine. Tickets cost forty euros.", id="first")
    b = Passage("The train to Lyon leaves at nine! Tickets cost forty euros.", id="mirror")
    c = Passage("Lyon is known for its food.", id="other")
    res = PassageDeduplicator().use_embedder(embedder, "all-minilm-l6-v2").compress_with_stats([a, b, c])
    assert [p.id for p in res.passages] == ["first", "other"]
    assert "'first'" in res.stats.dropped["mirror"]


def test_threshold_is_validated():
    with pytest.raises(ValueError, match="threshold"):
        RedundancyFilter(threshold=0)
    with pytest.raises(ValueError, match="threshold"):
        PassageDeduplicator(threshold=1.5)
