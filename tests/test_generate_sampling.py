"""Sampling, stop strings and chat history on the text path (tiny random Llama, CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ragcompress import Sampling
from ragcompress.generate import Generator
from ragcompress.prompt import PromptLayout

PASSAGES = [
    "The Rhine flows from the Swiss Alps to the North Sea through Germany and the Netherlands.",
    "Chopin was born in 1810 near Warsaw and left Poland at the age of twenty.",
]
QUESTION = "Where was Chopin born?"
HISTORY = [("user", "Who was Chopin?"), ("assistant", "A composer <|im_end|> from Poland.")]
HOT = 3.0  # a tiny random model is peaked: a high temperature makes seeds visibly differ


@pytest.fixture(scope="module")
def gen(tiny_llama, tokenizer) -> Generator:
    return Generator.from_model(tiny_llama, tokenizer, max_new_tokens=12)


def _hf_greedy(gen: Generator, ids: list[int], n: int) -> tuple[int, ...]:
    """transformers' own greedy search over the same prompt: the reference for temperature 0."""
    lm: Any = gen.lm
    out = lm.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=sorted(gen.stop_ids),
        pad_token_id=0,
    )
    new = [int(t) for t in out[0, len(ids) :]]
    for i, t in enumerate(new):
        if t in gen.stop_ids:
            return tuple(new[:i])
    return tuple(new)


def test_temperature_zero_is_todays_greedy(gen) -> None:
    ids = gen.layout.prompt_ids(PASSAGES, QUESTION)
    want = _hf_greedy(gen, ids, 12)
    assert len(want) > 3
    assert gen.generate(QUESTION, PASSAGES).token_ids == want
    # greedy ignores top_k/top_p/seed
    assert gen.generate(QUESTION, PASSAGES, sampling=Sampling(top_k=3, top_p=0.5, seed=9)).token_ids == want
    # top_k=1 samples from one token: the argmax, at any temperature
    assert (
        gen.generate(QUESTION, PASSAGES, sampling=Sampling(temperature=HOT, top_k=1, seed=4)).token_ids
        == want
    )


def test_same_seed_same_tokens_other_seeds_differ(gen) -> None:
    runs = {
        seed: gen.generate(QUESTION, PASSAGES, sampling=Sampling(temperature=HOT, seed=seed)).token_ids
        for seed in (1, 2, 3)
    }
    assert gen.generate(QUESTION, PASSAGES, sampling=Sampling(temperature=HOT, seed=1)).token_ids == runs[1]
    assert len(set(runs.values())) == 3
    assert runs[1] != gen.generate(QUESTION, PASSAGES).token_ids


def test_stream_ends_with_the_answer_of_generate(gen) -> None:
    sampling = Sampling(temperature=HOT, seed=5)
    stream = gen.stream(QUESTION, PASSAGES, sampling=sampling)
    assert stream.answer is None
    text = "".join(stream)
    want = gen.generate(QUESTION, PASSAGES, sampling=sampling)
    assert stream.answer is not None and stream.answer.token_ids == want.token_ids
    assert text.strip() == want.text == stream.answer.text
    assert stream.answer.stats.new_tokens == len(want.token_ids)


def test_stop_string_trims_and_ends_decoding(gen) -> None:
    full = gen.generate(QUESTION, PASSAGES)
    assert len(full.text) > 12
    stop = full.text[6:9]  # a stop string in the middle of the greedy answer
    cut = full.text[: full.text.index(stop)].strip()
    got = gen.generate(QUESTION, PASSAGES, sampling=Sampling(stop=(stop, "never appears")))
    assert got.text == cut and stop not in got.text
    assert len(got.token_ids) < len(full.token_ids)  # decoding stopped early
    assert got.token_ids == full.token_ids[: len(got.token_ids)]
    pieces = list(gen.stream(QUESTION, PASSAGES, sampling=Sampling(stop=(stop,))))
    assert "".join(pieces).strip() == cut
    assert all(stop not in "".join(pieces[: i + 1]) for i in range(len(pieces)))


def test_history_goes_between_passages_and_question(gen, tokenizer) -> None:
    layout: PromptLayout = gen.layout
    plain = layout.prompt_ids(PASSAGES, QUESTION)
    chat = layout.prompt_ids(PASSAGES, QUESTION, HISTORY)
    head = layout.prefix_ids() + [t for p in PASSAGES for t in layout.passage_ids(p)]
    assert plain[: len(head)] == chat[: len(head)] == head  # prefix and passages (chunk tokens) unchanged
    text = tokenizer.decode(chat[len(head) :])
    assert text.index("Who was Chopin?") < text.index("A composer") < text.index(QUESTION)
    # the <|im_end|> written in a history turn stays text: one control token per turn closed
    # (the documents' turn and each history turn), none from the content
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert chat.count(end) == plain.count(end) + 1 + len(HISTORY)
    answer = gen.generate(QUESTION, PASSAGES, history=HISTORY)
    assert answer.stats.prompt_tokens == len(chat)
    assert layout.prompt_ids(PASSAGES, QUESTION, []) == plain


def test_history_without_a_chat_template_is_plain_lines(tokenizer) -> None:
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    layout = PromptLayout(tok)
    text = tok.decode(layout.question_ids(QUESTION, [*HISTORY[:1], ("assistant", "A composer.")]))
    assert text.startswith(
        "User: Who was Chopin?\nAssistant: A composer.\n\nQuestion: Where was Chopin born?"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sampling": {"temperature": 1.0}}, TypeError, "sampling must be a ragcompress.Sampling"),
        ({"history": "hello"}, TypeError, "history must be a sequence"),
        ({"history": [("bot", "hi")]}, ValueError, r"history\[0\]: role must be one of"),
        ({"history": [("user",)]}, TypeError, r"history\[0\] must be a \(role, content\) pair"),
        ({"history": [("user", None)]}, TypeError, r"history\[0\] content must be str"),
    ],
)
def test_bad_sampling_or_history_is_a_clear_error(gen, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        gen.generate(QUESTION, PASSAGES, **kwargs)
    with pytest.raises(error, match=match):
        gen.stream(QUESTION, PASSAGES, **kwargs)  # checked at the call, before the model runs
