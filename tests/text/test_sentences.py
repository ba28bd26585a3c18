"""'sentences': query-aware selection, the embedding cache (memory and disk), long inputs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ragcompress import Budget, Passage
from ragcompress.text.base import BudgetError
from ragcompress.text.sentences import SentenceSelector

DOCS = [
    Passage(
        "Mount Everest is in the Himalayas on the border of Nepal and China. The summit of Everest "
        "is 8,849 metres above sea level. Climbers usually start from base camps.",
        id="everest",
    ),
    Passage(
        "The Amazon is the largest rainforest in the world. It covers much of the Amazon basin. "
        "Many species there are still undescribed.",
        id="amazon",
    ),
]


def _selector(embedder, **kw) -> SentenceSelector:
    return SentenceSelector(**kw).use_embedder(embedder, "all-minilm-l6-v2")  # type: ignore[return-value]


def test_picks_the_sentence_that_answers(embedder):
    query = "How many metres high is the summit of Mount Everest?"
    out = _selector(embedder).compress(DOCS, query, Budget(tokens=16))
    assert [p.id for p in out] == ["everest"]
    assert "8,849" in out[0].text
    assert out[0].metadata["ragcompress"]["kept_sentences"] == 1


def test_keeps_original_order(embedder):
    text = "Cats purr. The capital of France is Paris. Dogs bark. Paris lies on the Seine."
    out = _selector(embedder).compress([text], "What river flows through Paris, the capital of France?", 0.75)
    kept = out[0].text
    assert kept.index("capital") < kept.index("Seine")


def test_second_call_only_embeds_the_query(embedder):
    sel = _selector(embedder, cache_entries=64)  # its own cache (settings differ from the default)
    sel.sentence_embedder.cache.clear()
    emb = sel.sentence_embedder
    first = sel.compress(DOCS, "How high is Everest?", 0.5)
    calls, texts, hits = emb.encode_calls, emb.encoded_texts, emb.cache.hits
    second = sel.compress(DOCS, "How high is Everest?", 0.5)
    assert emb.encode_calls == calls + 1 and emb.encoded_texts == texts + 1  # the query only
    # One entry per passage, plus one for the (antecedent + sentence) pairs of "amazon",
    # whose "It covers much of the Amazon basin." leans on the sentence before it.
    assert emb.cache.hits == hits + len(DOCS) + 1
    assert [(p.id, p.text) for p in second] == [(p.id, p.text) for p in first]


def test_disk_cache_hit_equals_fresh(embedder, tmp_path):
    sel = _selector(embedder, cache_dir=str(tmp_path))
    fresh = sel.compress(DOCS, "largest rainforest", 0.5)
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == len(DOCS) + 1 and not list(tmp_path.rglob("*.tmp"))  # + amazon's pairs
    arr = np.load(files[0], allow_pickle=False)
    assert arr.dtype == np.float32 and arr.ndim == 2
    sel.sentence_embedder.cache.clear()  # memory tier gone: only the disk tier can hit
    texts = sel.sentence_embedder.encoded_texts
    again = sel.compress(DOCS, "largest rainforest", 0.5)
    assert sel.sentence_embedder.encoded_texts == texts + 1
    assert [(p.id, p.text) for p in again] == [(p.id, p.text) for p in fresh]


def test_corrupt_disk_entry_is_a_miss_not_a_crash(embedder, tmp_path):
    sel = _selector(embedder, cache_dir=str(tmp_path), cache_entries=7)
    fresh = sel.compress(DOCS, "Everest height", 0.5)
    for f in tmp_path.rglob("*.npy"):
        f.write_bytes(b"garbage, not an npy file")
    sel.sentence_embedder.cache.clear()
    texts = sel.sentence_embedder.encoded_texts
    again = sel.compress(DOCS, "Everest height", 0.5)
    assert sel.sentence_embedder.encoded_texts > texts + 1  # recomputed
    assert [(p.id, p.text) for p in again] == [(p.id, p.text) for p in fresh]


def test_budget_smaller_than_every_sentence_is_a_budget_error(embedder):
    with pytest.raises(BudgetError, match="shortest sentence"):
        _selector(embedder).compress(DOCS, "Everest", Budget(tokens=3))


def test_empty_query_is_a_value_error(embedder):
    with pytest.raises(ValueError, match="non-empty query"):
        _selector(embedder).compress(DOCS, "  ", 0.5)


def test_overlong_sentence_is_split_not_truncated(embedder):
    long = ", ".join(["the committee discussed the budget for the new library"] * 60) + "."
    p = Passage(long + " The library opens in May.")
    out = _selector(embedder).compress_with_stats([p], "When does the library open?", Budget(tokens=40))
    stats = out.passages[0].metadata["ragcompress"]
    assert stats["total_sentences"] > 3  # the long sentence became several pieces
    assert "opens in May" in out.passages[0].text
    assert out.stats.tokens_after <= 40


def test_a_million_character_passage(embedder):
    rng = random.Random(1)
    colours = ["red", "blue", "green"]
    pool = [f"Record {i} notes that the {rng.choice(colours)} valve was checked." for i in range(300)]
    text = " ".join(rng.choice(pool) for _ in range(21000))
    assert len(text) > 1_000_000
    res = _selector(embedder).compress_with_stats(
        [Passage(text, id="big")], "Was the red valve checked?", Budget(tokens=200)
    )
    assert res.stats.tokens_after <= 200 and res.passages[0].id == "big"
    assert res.passages[0].metadata["ragcompress"]["total_sentences"] == 21000
