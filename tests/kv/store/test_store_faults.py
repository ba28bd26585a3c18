"""Faults and load over shared stores: killed writers, Redis restarts, concurrent processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.faults import concurrent_clients, damaged_tiers, killed_writer, redis_restart
from ragcompress.kv.redis_store import RedisStore
from ragcompress.kv.tiered import MemoryTier, MultiTierStore


def _explain(outcome: Any) -> str:
    return f"{outcome.case}: {outcome.passed}/{outcome.tried}, failures={outcome.failures[:3]}"


def test_writer_killed_mid_write_disk(tmp_path: Path) -> None:
    outcome = killed_writer(str(tmp_path / "chunks"), kills=2, keys=2)
    assert outcome.ok, _explain(outcome)
    assert not list((tmp_path / "chunks").glob("quarantine/*"))  # nothing damaged was ever visible


def test_writer_killed_mid_write_redis(redis_url: str) -> None:
    outcome = killed_writer(redis_url, kills=2, keys=2)
    assert outcome.ok, _explain(outcome)


def test_redis_restart_mid_run_errors_clearly_then_recovers(
    redis_server: Any, redis_url: str, encoder: Any, passages: list[str]
) -> None:
    cache = ChunkCache(encoder, RedisStore(redis_url, retries=2, backoff_s=0.01))
    outcome = redis_restart(redis_server, cache, passages, requests=9)
    assert outcome.ok, _explain(outcome)
    assert outcome.details["errors_while_down"] == 3 and outcome.details["recovered"] == 3


def test_redis_restart_behind_a_memory_tier_keeps_answering(
    redis_server: Any, redis_url: str, encoder: Any, passages: list[str]
) -> None:
    # A host tier too small to keep anything: every lookup reaches Redis.
    store = MultiTierStore(
        [("host", MemoryTier(1)), ("remote", RedisStore(redis_url, retries=1, backoff_s=0.01))]
    )
    outcome = redis_restart(redis_server, ChunkCache(encoder, store), passages, requests=9)
    assert outcome.ok, _explain(outcome)
    assert outcome.details["errors_while_down"] == 0
    assert store.tier_stats()["remote"]["unavailable"] > 0


@pytest.mark.slow
def test_eight_processes_share_one_redis_store(redis_url: str, model_dir: str, passages: list[str]) -> None:
    corpus = [*passages, *(f"{p} (second edition)" for p in passages)]
    outcome = concurrent_clients(redis_url, model_dir, corpus, processes=8, rounds=2, per_request=3)
    assert outcome.ok, _explain(outcome)
    assert outcome.details["wrong"] == 0 and outcome.details["torn"] == 0
    assert outcome.details["hits"] > 0  # the processes did share chunks


def test_damaged_chunk_in_each_tier_of_a_signed_stack(
    redis_url: str, tmp_path: Path, encoder: Any, passages: list[str]
) -> None:
    from ragcompress.kv.disk_store import DiskStore

    stack = MultiTierStore(
        [
            ("host", MemoryTier(1 << 24)),
            ("disk", DiskStore(tmp_path / "tiers")),
            ("remote", RedisStore(redis_url, secret="a-shared-secret-of-32-characters")),
        ]
    )
    outcome = damaged_tiers(stack, ChunkCache(encoder, stack), passages)
    assert outcome.ok and outcome.tried == 6, _explain(outcome)
    assert all(stack.tier_stats()[name]["rejected"] for name in ("host", "disk", "remote"))
