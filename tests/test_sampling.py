"""Sampling settings, the token picker and stop strings, without a model."""

from __future__ import annotations

import pytest
import torch

from ragcompress import Sampling
from ragcompress.sampling import StopScanner, check_sampling, pick_token, request_rng, trim_at_stop


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": -1}, ValueError, "top_k"),
        ({"top_k": 2.5}, TypeError, "top_k"),
        ({"seed": "1"}, TypeError, "seed"),
        ({"seed": -1}, ValueError, "seed"),
        ({"stop": ("",)}, ValueError, "stop"),
        ({"stop": "\n"}, TypeError, "stop"),
        ({"stop": (1,)}, TypeError, "stop"),
    ],
)
def test_bad_settings_name_the_field(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        Sampling(**kwargs)


def test_defaults_are_greedy_and_lists_become_tuples() -> None:
    assert Sampling().greedy and not Sampling(temperature=0.5).greedy
    s = Sampling(stop=["a", "b"])  # type: ignore[arg-type]
    assert s.stop == ("a", "b") and hash(s) == hash(Sampling(stop=("a", "b")))
    assert check_sampling(None) == Sampling()
    with pytest.raises(TypeError, match=r"sampling must be a ragcompress\.Sampling"):
        check_sampling({"temperature": 1.0})


def test_greedy_is_the_argmax() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert pick_token(logits, Sampling(), request_rng(Sampling())) == int(logits.argmax())


def _draws(sampling: Sampling, logits: torch.Tensor, n: int = 200) -> list[int]:
    rng = request_rng(sampling)
    return [pick_token(logits, sampling, rng) for _ in range(n)]


def test_seed_replays_and_filters_hold() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    hot = Sampling(temperature=2.0, seed=7)
    assert _draws(hot, logits) == _draws(hot, logits)
    assert _draws(hot, logits) != _draws(Sampling(temperature=2.0, seed=8), logits)
    assert len(set(_draws(hot, logits))) > 10  # a hot sampler spreads over the vocabulary
    top3 = set(logits.topk(3).indices.tolist())
    assert set(_draws(Sampling(temperature=2.0, top_k=3, seed=1), logits)) <= top3
    assert set(_draws(Sampling(temperature=5.0, top_k=1, seed=1), logits)) == {int(logits.argmax())}


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15]))
    # 0.5 + 0.3 = 0.8 reaches 0.7: tokens 1 and 2 only
    assert set(_draws(Sampling(temperature=1.0, top_p=0.7, seed=3), logits)) == {1, 2}
    # a tiny top_p keeps the most likely token only
    assert set(_draws(Sampling(temperature=1.0, top_p=0.01, seed=3), logits)) == {1}


def test_sampled_frequencies_follow_the_distribution() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1])
    draws = _draws(Sampling(temperature=1.0, seed=0), probs.log(), n=3000)
    freq = torch.bincount(torch.tensor(draws), minlength=3).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.04)


def test_trim_at_stop_cuts_at_the_earliest_stop() -> None:
    assert trim_at_stop("abc. def\nghi", ("\n", ".")) == ("abc", True)
    assert trim_at_stop("abc", ("x",)) == ("abc", False)


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_scanner_never_shows_part_of_a_stop(cut) -> None:
    text = "Paris is nice. END of story"
    pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
    scanner, shown = StopScanner(("END", "###")), []
    for piece in pieces:
        out = scanner.feed(piece)
        shown.append(out)
        assert "E" not in "".join(shown)  # no prefix of "END" is ever shown
        if scanner.stopped:
            break
    assert scanner.stopped and "".join(shown) + scanner.flush() == "Paris is nice. "


def test_scanner_releases_a_held_tail_that_did_not_become_a_stop() -> None:
    scanner = StopScanner(("\n\nQ:",))
    shown = scanner.feed("one\n") + scanner.feed("\ntwo")
    assert shown == "one\n\ntwo" and not scanner.stopped
    held = scanner.feed("\n\n")
    assert held == "" and scanner.flush() == "\n\n"
