"""'summary': budget shares, truncation at sentence boundaries, NONE/empty drops, long inputs."""

from __future__ import annotations

import pytest

from ragcompress import Budget, Passage
from ragcompress.text.summarize import _NONE, Summarizer, _shares
from tests.support.tiny import make_tiny_llama

DOCS = [
    Passage("The bakery on Elm Street opens at seven. It sells rye bread and croissants.", id="bakery"),
    Passage("The city library lends books for three weeks. Late returns cost ten cents a day.", id="library"),
]


def test_shares_are_proportional_and_sum_to_the_target():
    shares = _shares([10, 30, 60], 17)
    assert sum(shares) == 17 and shares[0] <= shares[1] <= shares[2]
    assert _shares([5, 5], 1) in ([1, 0], [0, 1])


def test_none_answers_are_recognised():
    for text in ("NONE", "none.", " None ", "N/A", "**NONE**"):
        assert _NONE.fullmatch(text.strip())
    assert not _NONE.fullmatch("None of the shops open on Sunday.")


def test_fit_cuts_at_a_sentence_boundary_else_at_words():
    s = Summarizer()
    text = "The shop opens at seven. It closes at noon on Sundays and at six on other days."
    fitted, truncated = s._fit(text, 8)
    assert truncated and fitted == "The shop opens at seven."
    fitted, truncated = s._fit(text, 3)
    assert truncated and fitted and text.startswith(fitted) and s._counter(fitted) <= 3
    assert s._fit(text, 100) == (text, False)


def test_long_passage_is_summarized_in_pieces_of_whole_sentences(talkative_llama, tokenizer):
    s = Summarizer.from_model(talkative_llama, tokenizer, max_new_tokens=4, max_input_tokens=32)
    long = " ".join(f"Fact {i} says the river rose by {i} centimetres overnight." for i in range(12))
    pieces = s._pieces(long)
    assert len(pieces) > 1 and all(s._counter(p) <= 32 for p in pieces)
    assert " ".join(pieces) == long
    res = s.compress_with_stats([long], "How much did the river rise?", 0.5)
    assert res.stats.tokens_after <= Budget(ratio=0.5).target(res.stats.tokens_before)
    assert res.passages[0].metadata["ragcompress"]["generated_tokens"] > 4  # several pieces


def test_truncation_is_reported(talkative_llama, tokenizer):
    s = Summarizer.from_model(talkative_llama, tokenizer, max_new_tokens=24)
    res = s.compress_with_stats(DOCS, "When does the bakery open?", Budget(tokens=6))
    assert res.stats.tokens_after <= 6
    assert any(p.metadata["ragcompress"]["truncated"] for p in res.passages)


def test_empty_summary_drops_the_passage_with_a_reason(tokenizer):
    # At the usual 0.02 init a tied random tiny model only repeats the newline that ends the
    # chat template: its summaries are empty, which is the case under test.
    silent = make_tiny_llama(len(tokenizer), initializer_range=0.02)
    s = Summarizer.from_model(silent, tokenizer, max_new_tokens=4)
    res = s.compress_with_stats(DOCS, "When does the bakery open?", 0.5)
    assert res.passages == []
    assert all("NONE or nothing" in r for r in res.stats.dropped.values()) and len(res.stats.dropped) == 2


@pytest.mark.slow
def test_real_reader_summary_holds_the_budget():
    s = Summarizer(max_new_tokens=24)
    res = s.compress_with_stats(DOCS, "When does the bakery open?", 0.6)
    assert res.stats.tokens_after <= Budget(ratio=0.6).target(res.stats.tokens_before)
    assert {p.id for p in res.passages} <= {"bakery", "library"}
    for p in res.passages:
        assert p.text and p.metadata["ragcompress"]["generated_tokens"] <= 24
