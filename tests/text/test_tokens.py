"""'tokens' and 'tokens-query': surprisal scoring, windows, top-k selection."""

from __future__ import annotations

import numpy as np
import pytest

from ragcompress import Budget, Passage
from ragcompress.text.tokens import QueryTokenPruner, TokenPruner, surprisal

TEXT = (
    "The harbour of the old town was rebuilt in 1902 after a storm destroyed the piers. "
    "Fishing boats still leave before dawn, and the market opens at six every morning."
)


def test_windowed_surprisal_equals_one_pass_when_context_covers_everything(tiny_llama, tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    full = surprisal(tiny_llama, ids, [1], window=len(ids), context=0)
    windowed = surprisal(tiny_llama, ids, [1], window=7, context=len(ids))
    np.testing.assert_allclose(windowed, full, rtol=1e-4, atol=1e-4)
    assert full.shape == (len(ids),) and np.all(full > 0)


def test_keeps_exactly_the_highest_surprisal_tokens_in_order(tiny_llama, tokenizer):
    pruner = TokenPruner.from_model(tiny_llama, tokenizer, window=16, context=4)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    s = surprisal(tiny_llama, ids, pruner._prefix(tokenizer, ""), 16, 4)
    k = 20
    top = sorted(np.argsort(-s, kind="stable")[:k])
    out = pruner.compress([TEXT], "", Budget(tokens=k))[0]
    expected = tokenizer.decode([ids[i] for i in top]).strip()
    if len(tokenizer(expected, add_special_tokens=False)["input_ids"]) <= k:  # no re-merge shrink
        assert out.text == expected
    assert out.metadata["ragcompress"]["tokens_after"] <= k
    kept_mean = s[top].mean()
    dropped_mean = np.delete(s, top).mean()
    assert kept_mean > dropped_mean


def test_long_passage_in_small_windows_holds_the_budget(tiny_llama, tokenizer):
    long = " ".join([TEXT] * 25)  # ~1000 tokens, scored 64 at a time
    pruner = TokenPruner.from_model(tiny_llama, tokenizer, window=64, context=16)
    res = pruner.compress_with_stats([Passage(long, id="long")], "", 0.25)
    assert res.stats.tokens_after <= Budget(ratio=0.25).target(res.stats.tokens_before)
    assert res.passages[0].id == "long"


def test_query_conditioning_changes_the_scores(tiny_llama, tokenizer):
    plain = TokenPruner.from_model(tiny_llama, tokenizer)
    cond = QueryTokenPruner.from_model(tiny_llama, tokenizer)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    a = surprisal(tiny_llama, ids, plain._prefix(tokenizer, "When was it rebuilt?"), 256, 64)
    b = surprisal(tiny_llama, ids, cond._prefix(tokenizer, "When was it rebuilt?"), 256, 64)
    assert not np.allclose(a, b)
    assert QueryTokenPruner.query_aware and not TokenPruner.query_aware


def test_query_pruner_needs_a_query(tiny_llama, tokenizer):
    with pytest.raises(ValueError, match="non-empty"):
        QueryTokenPruner.from_model(tiny_llama, tokenizer).compress([TEXT], "", 0.5)


def test_window_is_validated():
    with pytest.raises(ValueError, match="window"):
        TokenPruner(window=0)


@pytest.mark.slow
def test_real_reader_keeps_the_surprising_code():
    """SmolLM2 finds a counting sequence predictable and a random code surprising."""
    text = (
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen. The access code is QX7-ZK9."
    )
    res = TokenPruner().compress_with_stats([text], "", 0.5)
    out = res.passages[0].text
    assert res.stats.tokens_after <= Budget(ratio=0.5).target(res.stats.tokens_before)
    assert "QX" in out or "ZK" in out
    assert sum(w in out.split() for w in ("five", "six", "seven", "eight", "nine", "ten")) < 6
