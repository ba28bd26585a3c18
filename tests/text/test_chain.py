"""'chain': steps in sequence, the final budget on the total, per-step stats."""

from __future__ import annotations

import pytest

import ragcompress
from ragcompress import Budget, Passage
from ragcompress.text.chain import Chain
from ragcompress.text.random_drop import RandomDrop
from ragcompress.text.redundancy import RedundancyFilter
from ragcompress.text.sentences import SentenceSelector

DOCS = [
    Passage("Saturn has prominent rings. Saturn has many moons. Titan is its largest moon.", id="s"),
    Passage("Saturn has prominent rings. Jupiter is the largest planet. Mars looks red.", id="j"),
]


def test_build_from_a_list_is_a_chain_and_round_trips():
    chain = ragcompress.build([{"name": "redundancy"}, {"name": "random", "seed": 2}])
    assert isinstance(chain, Chain) and [s.registered_name for s in chain.steps] == ["redundancy", "random"]
    spec = chain.spec()
    assert spec["steps"][1] == RandomDrop(seed=2).spec()
    assert ragcompress.build(spec) == chain
    assert chain.query_aware is False
    assert ragcompress.build([{"name": "random"}, {"name": "sentences"}]).query_aware is True


def test_two_steps_hold_the_final_budget_and_record_each_step(embedder):
    dedup = RedundancyFilter().use_embedder(embedder, "all-minilm-l6-v2")
    select = SentenceSelector().use_embedder(embedder, "all-minilm-l6-v2")
    chain = Chain([dedup, select])
    res = chain.compress_with_stats(DOCS, "What is Saturn's largest moon?", Budget(tokens=12))
    assert res.stats.tokens_after <= 12
    assert [s.compressor for s in res.steps] == ["redundancy", "sentences"]
    assert res.steps[0].tokens_before == res.stats.tokens_before
    assert res.steps[1].tokens_before == res.steps[0].tokens_after  # step 2 sees step 1's output
    assert "Titan" in " ".join(p.text for p in res.passages)
    for p in res.passages:
        assert [h["step"] for h in p.metadata["ragcompress"]["steps"]] == ["redundancy", "sentences"]
    assert all(reason.startswith("step ") for reason in res.stats.dropped.values())


def test_ratio_budget_applies_to_the_chain_input():
    chain = Chain([RandomDrop(seed=1, ratio=0.8), RandomDrop(seed=2)])
    text = " ".join(f"Fact number {i} is true." for i in range(30))
    res = chain.compress_with_stats([text], "", 0.3)
    assert res.stats.tokens_after <= Budget(ratio=0.3).target(res.stats.tokens_before)


def test_invalid_chains_are_rejected():
    with pytest.raises(ValueError, match="at least one step"):
        Chain([])
    with pytest.raises(KeyError, match="unknown method"):
        Chain([{"name": "no-such-method"}])


def test_a_kv_press_is_not_a_chain_step():
    if "knorm" not in ragcompress.available("press"):
        pytest.skip("no KV press registered")
    with pytest.raises(TypeError, match="not a text compressor"):
        Chain([{"name": "random"}, {"name": "knorm"}])
