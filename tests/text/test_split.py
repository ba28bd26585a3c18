"""The sentence splitter: segments partition the text, abbreviations hold, long sentences are cut."""

from __future__ import annotations

import random

import pytest

from ragcompress.text.split import join_kept, join_segments, segment_texts, split_sentences


def _sentences(text: str, **kw) -> list[str]:
    return [s.strip() for s in segment_texts(text, split_sentences(text, **kw))]


def test_segments_partition_the_text():
    text = "  First one. Second one!  Third?\n\nFourth without a dot\n\nFifth.  "
    spans = split_sentences(text)
    assert "".join(segment_texts(text, spans)) == text
    assert [b for _, b in spans[:-1]] == [a for a, _ in spans[1:]]
    assert _sentences(text) == ["First one.", "Second one!", "Third?", "Fourth without a dot", "Fifth."]


def test_abbreviations_initials_decimals_do_not_split():
    text = (
        "Dr. Smith met J. R. Doe at 5 p.m. on Main St. in town. Pi is about 3.14 today. "
        "Cats, e.g. lions, are big. It costs approx. five euros."
    )
    assert _sentences(text) == [
        "Dr. Smith met J. R. Doe at 5 p.m. on Main St. in town.",
        "Pi is about 3.14 today.",
        "Cats, e.g. lions, are big.",
        "It costs approx. five euros.",
    ]


def test_quotes_and_brackets_stay_with_their_sentence():
    got = _sentences('He said "Stop." Then he left. (It was late.) Next.')
    assert got[:2] == ['He said "Stop."', "Then he left."]
    # sentencex keeps a bracketed sentence with the one after it; it is never cut inside.
    assert any(s.startswith("(It was late.)") for s in got)


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        (
            "zh",
            "今天天气很好。我们去公园吧！你想一起去吗？",
            ["今天天气很好。", "我们去公园吧！", "你想一起去吗？"],
        ),
        (
            "ja",
            "今日は晴れです。公園に行きましょう！一緒に行きますか？",
            ["今日は晴れです。", "公園に行きましょう！", "一緒に行きますか？"],
        ),
        (
            "hi",
            "यह पहला वाक्य है। यह दूसरा वाक्य है। क्या यह तीसरा है?",
            ["यह पहला वाक्य है।", "यह दूसरा वाक्य है।", "क्या यह तीसरा है?"],
        ),
        (
            "de",
            "Wir treffen uns am 3. Oktober in Berlin. Das ist z. B. gut. Dr. Müller kommt um 10 Uhr.",
            ["Wir treffen uns am 3. Oktober in Berlin.", "Das ist z. B. gut.", "Dr. Müller kommt um 10 Uhr."],
        ),
    ],
)
def test_other_languages_split_at_their_own_marks(language, text, expected):
    spans = split_sentences(text, language=language)
    assert "".join(segment_texts(text, spans)) == text
    assert _sentences(text, language=language) == expected


def test_cjk_splits_with_the_default_language_too():
    # Mixed-language corpora are common: the default rules still know the full-width marks.
    assert len(_sentences("今天天气很好。我们去公园吧！Then English. 今日は晴れです。")) == 4


@pytest.mark.parametrize("bad", ["", "English", "e", "EN!", 3])
def test_a_bad_language_names_the_argument(bad):
    with pytest.raises(ValueError, match="language"):
        split_sentences("One. Two.", language=bad)


def test_blank_text_has_no_segments():
    assert split_sentences("") == [] and split_sentences(" \n\t ") == []


def test_join_of_a_subset_reads_naturally():
    text = "Alpha is first. Beta is second. Gamma is third."
    segs = segment_texts(text, split_sentences(text))
    assert join_segments([segs[0], segs[2]]) == "Alpha is first. Gamma is third."
    assert join_segments([segs[1]]) == "Beta is second."


def _offsets(embedder):
    def offsets(s: str):
        enc = embedder.tokenizer(s, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]

    return offsets


def test_long_sentence_is_cut_at_clauses_never_truncated(embedder):
    clause = "the river bends slowly past the old mill"
    text = "Short one. " + ", ".join([clause] * 80) + ". Last one."
    offsets = _offsets(embedder)
    spans = split_sentences(text, 64, offsets)
    pieces = segment_texts(text, spans)
    assert "".join(pieces) == text  # nothing lost
    assert all(len(offsets(p)) <= 64 for p in pieces)
    assert len(pieces) > 3
    middle = pieces[1:-1]
    assert all(p.rstrip().endswith(",") or p.rstrip().endswith(".") for p in middle)


def test_text_without_spaces_is_cut_in_hard_windows(embedder):
    text = "x" * 5000 + "abcdefghij" * 300
    offsets = _offsets(embedder)
    pieces = segment_texts(text, split_sentences(text, 100, offsets))
    assert "".join(pieces) == text
    assert all(len(offsets(p)) <= 100 for p in pieces)


def test_a_million_characters_split_completely():
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    sentences = [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 14))).capitalize() + rng.choice(".!?")
        for _ in range(20000)
    ]
    text = " ".join(sentences)
    assert len(text) > 1_000_000
    spans = split_sentences(text)
    assert len(spans) == len(sentences)
    assert "".join(segment_texts(text, spans)) == text


def test_max_pieces_must_be_positive(embedder):
    with pytest.raises(ValueError, match="max_pieces"):
        split_sentences("A long sentence here.", 0, _offsets(embedder))


def test_join_kept_spaces_sentences_that_touched_across_a_gap():
    text = "First one.Second one.Third one. 第一句。第二句。第三句。"
    segs = segment_texts(text, split_sentences(text))
    assert [s.strip() for s in segs][:3] == ["First one.", "Second one.", "Third one."]
    assert join_kept(segs, [0, 2]) == "First one. Third one."  # not "one.Third"
    assert join_kept(segs, [0, 1]) == "First one.Second one."  # adjacent: the source as it was
    assert join_kept(segs, [3, 5]) == "第一句。第三句。"  # no spaces in CJK
    assert join_kept(segs, list(range(len(segs)))) == text
