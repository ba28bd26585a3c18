"""FAISS retrieval with the packaged MiniLM embedder (real model: marked slow)."""

from __future__ import annotations

import json

import pytest

from ragcompress import Passage
from ragcompress.corpus import load_passages, load_questions
from ragcompress.retrieve import FaissRetriever, IndexFormatError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retriever():
    return FaissRetriever.from_passages(load_passages())


def test_gold_passage_is_retrieved(retriever):
    questions = load_questions()
    top2 = sum(q.passage_id in [p.id for p in retriever.search(q.question, k=2)] for q in questions)
    # every bundled question was checked to retrieve its gold passage within the top 2;
    # allow one miss so a different embedder build does not make this flaky
    assert top2 >= len(questions) - 1
    hits = retriever.search(questions[0].question, k=5)
    assert len(hits) == 5
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-5 for s in scores)
    # metadata travels with the passage
    assert all(h.metadata["title"] for h in hits)


def test_k_larger_than_index_and_bad_queries(retriever):
    small = FaissRetriever.from_passages([Passage("alpha beta", id="a"), Passage("gamma delta", id="b")])
    assert {p.id for p in small.search("alpha", k=10)} == {"a", "b"}
    with pytest.raises(ValueError, match="non-empty"):
        retriever.search("   ")
    with pytest.raises(ValueError, match="k must be"):
        retriever.search("Warsaw", k=0)


def test_bad_passages_rejected():
    with pytest.raises(ValueError, match="'e' is empty"):
        FaissRetriever.from_passages([Passage("ok", id="o"), Passage("  ", id="e")])
    with pytest.raises(ValueError, match="'d' occurs twice"):
        FaissRetriever.from_passages([Passage("one", id="d"), Passage("two", id="d")])


def test_save_load_round_trip(retriever, tmp_path):
    out = retriever.save(tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "passages.json"]
    again = FaissRetriever.load(out)
    assert len(again) == len(retriever)
    q = load_questions()[3].question
    a, b = retriever.search(q, k=4), again.search(q, k=4)
    assert [p.id for p in a] == [p.id for p in b]
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.metadata for p in a] == [p.metadata for p in b]
    assert [p.score for p in a] == pytest.approx([p.score for p in b], abs=1e-6)


def test_load_rejects_incomplete_or_foreign_folders(retriever, tmp_path):
    with pytest.raises(IndexFormatError, match=r"index\.faiss is missing"):
        FaissRetriever.load(tmp_path)
    out = retriever.save(tmp_path / "idx")
    meta = json.loads((out / "passages.json").read_text())
    meta["passages"] = meta["passages"][:-1]
    (out / "passages.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=r"passages\.json lists 44 passages"):
        FaissRetriever.load(out)
    (out / "passages.json").write_text("{broken")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        FaissRetriever.load(out)


def test_indexing_a_corpus_shows_progress_and_a_query_does_not(capsys):
    r = FaissRetriever.from_passages(["one passage.", "another passage.", "a third."], progress_over=2)
    assert "Batches" in capsys.readouterr().err  # sentence-transformers' tqdm bar
    r.search("passage")
    assert "Batches" not in capsys.readouterr().err
