"""The contract every registered text compressor keeps, parametrized over ``available("text")``.

A new method must add a cheap factory to FACTORIES; the first test fails until it does.
"""

from __future__ import annotations

import json

import pytest

import ragcompress
from ragcompress import Budget, Passage
from ragcompress.text.base import BudgetError, TextCompressor

QUERY = "How tall is the Eiffel Tower?"

PASSAGES = [
    Passage(
        "The Eiffel Tower is a wrought-iron lattice tower in Paris. It is 330 metres tall. "
        "It was designed by the company of Gustave Eiffel. Millions of people visit it every year.",
        id="eiffel",
        score=0.9,
        metadata={"source": "wiki", "rank": 1},
    ),
    Passage(
        "Bananas are elongated edible fruit. They grow in clusters near the top of the plant. "
        "Most bananas sold in shops are of the Cavendish variety.",
        id="banana",
        score=0.4,
        metadata={"source": "web"},
    ),
    Passage(
        "The Statue of Liberty stands on Liberty Island in New York. Its height from base to "
        "torch is 46 metres. It was a gift from France to the United States in 1886.",
        id="liberty",
        score=0.7,
    ),
]

# Methods whose output is made of pieces of the input (ratio 1.0 must change nothing).
EXTRACTIVE = {"sentences", "random", "redundancy", "dedup-passages", "tokens", "tokens-query", "chain"}


def _factories(tokenizer, tiny_llama, talkative_llama, embedder):
    from ragcompress.text.chain import Chain
    from ragcompress.text.random_drop import RandomDrop
    from ragcompress.text.redundancy import PassageDeduplicator, RedundancyFilter
    from ragcompress.text.sentences import SentenceSelector
    from ragcompress.text.summarize import Summarizer
    from ragcompress.text.tokens import QueryTokenPruner, TokenPruner

    return {
        "sentences": lambda: SentenceSelector().use_embedder(embedder, "all-minilm-l6-v2"),
        "redundancy": lambda: RedundancyFilter().use_embedder(embedder, "all-minilm-l6-v2"),
        "dedup-passages": lambda: PassageDeduplicator().use_embedder(embedder, "all-minilm-l6-v2"),
        "random": lambda: RandomDrop(seed=3),
        "tokens": lambda: TokenPruner.from_model(tiny_llama, tokenizer, window=32, context=8),
        "tokens-query": lambda: QueryTokenPruner.from_model(tiny_llama, tokenizer, window=32, context=8),
        "summary": lambda: Summarizer.from_model(talkative_llama, tokenizer, max_new_tokens=6),
        "chain": lambda: Chain([RedundancyFilter().use_embedder(embedder, "all-minilm-l6-v2"), RandomDrop()]),
    }


@pytest.fixture(scope="module")
def make(tokenizer, tiny_llama, talkative_llama, embedder):
    return _factories(tokenizer, tiny_llama, talkative_llama, embedder)


NAMES = ragcompress.available("text")


def test_every_registered_text_compressor_has_a_factory(make):
    missing = set(NAMES) - set(make)
    assert not missing, f"add a factory for {sorted(missing)} to tests/text/test_contract.py"


@pytest.fixture(params=NAMES)
def comp(request, make) -> TextCompressor:
    if request.param not in make:
        pytest.fail(f"no factory for {request.param!r}")
    c = make[request.param]()
    assert c.registered_name == request.param
    return c


def test_identity_order_metadata_kept(comp):
    out = comp.compress(PASSAGES, QUERY, 0.5)
    ids = [p.id for p in out]
    originals = {p.id: p for p in PASSAGES}
    assert ids == [p.id for p in PASSAGES if p.id in ids], "order must follow the input"
    assert len(set(ids)) == len(ids) and set(ids) <= set(originals)
    for p in out:
        src = originals[p.id]
        assert p.score == src.score
        for k, v in src.metadata.items():
            assert p.metadata[k] == v
        stats = p.metadata["ragcompress"]
        assert stats["tokens_after"] <= stats["tokens_before"]
        assert p.text.strip() == p.text and p.text


def test_empty_in_empty_out(comp):
    res = comp.compress_with_stats([], QUERY)
    assert res.passages == [] and res.stats.tokens_before == 0 and res.stats.tokens_after == 0


def test_whitespace_passages_dropped_with_reason(comp):
    blank = Passage("  \n\t ", id="blank")
    res = comp.compress_with_stats([blank, PASSAGES[0]], QUERY, 1.0)
    assert "blank" not in [p.id for p in res.passages]
    assert "empty" in res.stats.dropped["blank"]


@pytest.mark.parametrize("budget", [0.3, 0.6, Budget(tokens=45)], ids=["r0.3", "r0.6", "t45"])
def test_budget_held(comp, budget, tokenizer):
    res = comp.compress_with_stats(PASSAGES, QUERY, budget)
    target = Budget.coerce(budget).target(res.stats.tokens_before)
    assert res.stats.tokens_after <= target
    recount = sum(len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in res.passages)
    assert recount == res.stats.tokens_after
    for pid in {p.id for p in PASSAGES} - {p.id for p in res.passages}:
        assert res.stats.dropped[pid], "every dropped passage needs a reason"


def test_tiny_budget_is_held_or_refused(comp):
    """Below a method's granularity the answer is a BudgetError, never a silent overrun."""
    try:
        res = comp.compress_with_stats(PASSAGES, QUERY, Budget(tokens=3))
    except BudgetError as err:
        assert "3 tokens" in str(err)
    else:
        assert res.stats.tokens_after <= 3


def test_deterministic(comp):
    a = comp.compress(PASSAGES, QUERY, 0.5)
    b = comp.compress(PASSAGES, QUERY, 0.5)
    assert [(p.id, p.text) for p in a] == [(p.id, p.text) for p in b]


def test_spec_round_trips(comp):
    spec = comp.spec()
    assert json.loads(json.dumps(spec)) == spec
    rebuilt = ragcompress.build(spec)
    assert type(rebuilt) is type(comp) and rebuilt == comp and rebuilt.spec() == spec
    assert ragcompress.build(json.dumps(spec)) == comp


def test_ratio_one_keeps_everything(comp):
    if comp.registered_name not in EXTRACTIVE:
        pytest.skip("abstractive: ratio 1.0 bounds the length, it does not keep the text")
    out = comp.compress(PASSAGES, QUERY, 1.0)
    assert [(p.id, p.text) for p in out] == [(p.id, p.text) for p in PASSAGES]


def test_non_str_passage_is_a_type_error_naming_it(comp):
    with pytest.raises(TypeError, match="#1"):
        comp.compress([PASSAGES[0], 42], QUERY)  # type: ignore[list-item]


def test_invalid_utf8_is_a_value_error(comp):
    with pytest.raises(ValueError, match="UTF-8"):
        comp.compress([b"ok", b"\xff\xfe bad"], QUERY)  # type: ignore[list-item]


def test_zero_ratio_is_rejected(comp):
    with pytest.raises(ValueError, match="ratio"):
        comp.compress(PASSAGES, QUERY, Budget(ratio=0))
    with pytest.raises(ValueError, match="ratio"):
        comp.compress(PASSAGES, QUERY, 0.0)
