"""Metrics on hand-made cases."""

from __future__ import annotations

import math

import pytest
from ragcompress_bench import metrics as M


def test_normalization_follows_squad() -> None:
    assert M.normalize_answer("The  Rococo, architecture!") == "rococo architecture"
    assert M.normalize_answer("An apple a day") == "apple day"


def test_exact_match_and_f1() -> None:
    assert M.exact_match("the Rococo.", ["rococo"]) == 1.0
    assert M.exact_match("rococo style", ["rococo"]) == 0.0
    assert M.exact_match("Rococo\nbecause the palace ...", ["rococo"]) == 1.0  # first line only
    assert M.token_f1("rococo style", ["rococo"]) == pytest.approx(2 / 3)
    assert M.token_f1("baroque", ["rococo"]) == 0.0
    assert M.token_f1("x", ["nope", "x"]) == 1.0  # best over references


def test_yes_no() -> None:
    assert M.yesno_label("Yes, it does.") == "yes"
    assert M.yesno_label("False.") == "no"
    assert M.yesno_label("It depends") is None
    assert M.yesno_accuracy("No.", ["no"]) == 1.0
    assert M.yesno_accuracy("maybe", ["yes"]) == 0.0


def test_answer_survives_uses_normalized_word_boundaries() -> None:
    assert M.answer_survives("The area spans 1,600 miles of coast.", ["1,600 miles"])
    assert M.answer_survives("... the ROCOCO era", ["rococo"])
    assert not M.answer_survives("21600 miles", ["1600 miles"])
    assert not M.answer_survives("", ["x"])


def test_agreement_ratio_mean() -> None:
    assert M.answers_agree("Rococo.", "rococo")
    assert not M.answers_agree("Rococo", "Baroque")
    assert M.compression_ratio(100, 25) == 4.0
    assert math.isinf(M.compression_ratio(10, 0))
    assert M.mean([1.0, None, 3.0]) == 2.0
    assert M.mean([None]) is None


def test_contains_answer_reads_a_sentence_answer_on_its_first_line() -> None:
    answer = "The Osmel River runs through the town where Velor Danik was born."
    assert M.contains_answer(answer, ["Osmel River", "Osmel"]) == 1.0
    assert M.token_f1(answer, ["Osmel River"]) < 0.4  # what F1 makes of the same right answer
    assert M.contains_answer("The Brask River.\nNot the Osmel River", ["Osmel River"]) == 0.0
    assert M.contains_answer("Osmelholm", ["Osmel"]) == 0.0  # word boundaries
