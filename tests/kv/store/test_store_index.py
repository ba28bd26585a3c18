"""index_corpus: pre-encoding into Redis, idempotent and resumable, in-process and on local Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.index import index_corpus
from ragcompress.kv.store.open import StoreUnavailableError, open_store
from ragcompress.types import Passage

CORPUS = [
    "The Nile is the longest river in Africa.",
    "Mount Everest lies on the border of Nepal and China.",
    "The Pacific is the largest and deepest ocean.",
    "Honey never spoils when it is stored sealed.",
    "Venus is the hottest planet in the solar system.",
    "Octopuses have three hearts and blue blood.",
]


def _cache(model_dir: str, url: str, presses: list[Any] | None = None) -> ChunkCache:
    from ragcompress.models.load import load_reader

    lm, tok = load_reader(model_dir, "cpu")
    return ChunkCache(ChunkEncoder(lm, tok), open_store(url), presses or [])


def test_index_then_reindex_skips_everything(redis_url: str, model_dir: str) -> None:
    first = index_corpus(CORPUS, redis_url, model=model_dir, batch_size=4, progress=False)
    assert (first.passages, first.encoded, first.skipped, first.workers) == (6, 6, 0, 1)
    second = index_corpus(CORPUS, redis_url, model=model_dir, batch_size=4, progress=False)
    assert (second.passages, second.encoded, second.skipped) == (6, 0, 6)
    assert set(second.as_dict()) >= {"passages", "encoded", "skipped", "seconds"}
    # A generator process over the same store finds every chunk: all hits, nothing encoded.
    chunks, stats = _cache(model_dir, redis_url).get_or_encode(CORPUS)
    assert (stats.hits, stats.encoded) == (6, 0)
    assert [c.length for c in chunks] == [
        len(_cache(model_dir, redis_url).encoder.passage_ids(Passage(t))) for t in CORPUS
    ]


def test_index_resumes_and_counts_duplicates_as_skipped(redis_url: str, model_dir: str) -> None:
    index_corpus(CORPUS[:3], redis_url, model=model_dir, progress=False)
    summary = index_corpus([*CORPUS, CORPUS[0]], redis_url, model=model_dir, batch_size=16, progress=False)
    assert (summary.passages, summary.encoded, summary.skipped) == (7, 3, 4)


def test_index_with_presses_and_tenant(redis_url: str, model_dir: str) -> None:
    presses = [{"name": "knorm", "ratio": 0.5}]
    url = redis_url + "?tenant=acme"
    summary = index_corpus(CORPUS[:2], url, model=model_dir, presses=presses, progress=False)
    assert summary.encoded == 2
    chunks, stats = _cache(model_dir, url, presses).get_or_encode(CORPUS[:2])
    assert stats.hits == 2 and all(c.num_tokens < c.length for c in chunks)
    # Other presses or another tenant are other chunks.
    assert _cache(model_dir, url).get_or_encode(CORPUS[:1])[1].encoded == 1
    assert _cache(model_dir, redis_url, presses).get_or_encode(CORPUS[:1])[1].encoded == 1


def test_index_a_folder_of_text_files(redis_url: str, model_dir: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("\n\n".join(CORPUS[:3]), encoding="utf-8")
    (docs / "b.md").write_text("\n\n".join(CORPUS[3:]), encoding="utf-8")
    first = index_corpus(docs, redis_url, model=model_dir, progress=False)
    assert (first.passages, first.encoded) == (6, 6)
    again = index_corpus(str(docs), redis_url, model=model_dir, progress=False)
    assert (again.encoded, again.skipped) == (0, 6)


def test_index_fails_early_and_clearly(model_dir: str) -> None:
    from tests.support.redis_local import free_port

    with pytest.raises(StoreUnavailableError, match="unreachable"):
        index_corpus(CORPUS, f"redis://127.0.0.1:{free_port()}/0", model=model_dir, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        index_corpus(CORPUS, "memory://", model=model_dir, batch_size=0, progress=False)


@pytest.mark.slow
def test_index_on_local_ray(redis_url: str, model_dir: str) -> None:
    ray = pytest.importorskip("ray", reason="indexing on Ray needs `pip install ray`")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        first = index_corpus(
            CORPUS, redis_url, model=model_dir, ray_address="local", batch_size=2, progress=False
        )
        assert (first.passages, first.encoded, first.skipped, first.workers) == (6, 6, 0, 2)
        second = index_corpus(
            CORPUS, redis_url, model=model_dir, ray_address="local", batch_size=2, progress=False
        )
        assert (second.encoded, second.skipped) == (0, 6)
    finally:
        ray.shutdown()
    _, stats = _cache(model_dir, redis_url).get_or_encode(CORPUS)
    assert (stats.hits, stats.encoded) == (6, 0)
