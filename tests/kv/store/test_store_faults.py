"""Faults and load over shared stores: killed writers, Redis restarts, concurrent processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.kv.store.redis import RedisStore
from ragcompress.kv.store.tiered import TieredStore
from tests.support.faults import concurrent_clients, damaged_tiers, killed_writer, redis_restart


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
    store = TieredStore(
        [("host", MemoryStore(1, device="cpu")), ("remote", RedisStore(redis_url, retries=1, backoff_s=0.01))]
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
    from ragcompress.kv.store.disk import DiskStore

    stack = TieredStore(
        [
            ("host", MemoryStore(1 << 24, device="cpu")),
            ("disk", DiskStore(tmp_path / "tiers")),
            ("remote", RedisStore(redis_url, secret="a-shared-secret-of-32-characters")),
        ]
    )
    outcome = damaged_tiers(stack, ChunkCache(encoder, stack), passages)
    assert outcome.ok and outcome.tried == 6, _explain(outcome)
    assert all(stack.tier_stats()[name]["rejected"] for name in ("host", "disk", "remote"))


# -- one small case of each scenario module of benchmarks/faults (issue #13), so it cannot rot --
@pytest.fixture
def env(tmp_path: Path, redis_server: Any, redis_url: str, model_dir: str) -> Any:
    import sys

    from ragcompress.kv.encode.encoder import ChunkEncoder
    from ragcompress.models.load import load_reader

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root: `benchmarks`
    from benchmarks.faults.common import Env

    # Loaded from its folder, as the load scenario's worker processes load it: the same chunk keys.
    lm, tok = load_reader(model_dir, "cpu")
    encoder = ChunkEncoder(lm, tok, max_batch_tokens=1)
    return Env(tmp_path, model_dir, lm, tok, encoder, redis_server, quick=True)


SCENARIOS = [
    "integrity.planted_and_damaged",
    "integrity.weights_changed",
    "threads.eight_threads",
    "disk.disk_edges",
    "degrade.degrade",
    "inputs.urls",
    "inputs.cli_errors",
    "inputs.bad_inputs",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_benchmark_scenario_holds_on_a_few_cases(scenario: str, env: Any) -> None:
    import importlib

    module, name = scenario.split(".")
    outcome = getattr(importlib.import_module(f"benchmarks.faults.{module}"), name)(env)
    assert outcome.tried >= 2, _explain(outcome)
    assert outcome.ok, _explain(outcome)


def test_benchmark_load_two_processes_no_wrong_answer(env: Any) -> None:
    from benchmarks.faults.load import MODES, load

    rows = load(env, processes=2, per_process=3)
    assert len(rows) == len(MODES) + 1
    for row in rows[:-1]:  # every request answered, none wrong, Redis down or not
        assert row.ok and row.details["answered"] == 6, _explain(row)
        assert row.details["wrong_answers"] == 0 and row.details["wrong_chunks"] == 0
    assert rows[2].details["redis_stopped_after_requests"] >= 0
    assert rows[-1].tried == len(MODES)  # dedup is measured (its goal is the benchmark's to judge)
