"""Fault, load and hostile-input scenarios of the chunk store (issue #13), on the tiny model and a
loopback redis-server.

    python benchmarks/store_faults.py [--processes 8] [--per-process 100] [--quick] [--out DIR]

Starts its own redis-server on 127.0.0.1 (a free port; nothing else is contacted), runs the
store scenarios of :mod:`tests.support.faults` and every defect class of issue #13
(:mod:`benchmarks.faults`), prints a table (scenario, cases tried, held, throughput, details)
and writes ``store_faults.json`` and ``store_faults.txt`` under ``--out`` with the command
line, the machine and the date. Exits 1 when a case does not hold.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.faults`, run as a script

from benchmarks.faults.common import PASSAGES, Env, make_env


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'scenario':<56} {'tried':>6} {'held':>6} {'per s':>8} {'seconds':>8}  details"
    lines = [head, "-" * len(head)]
    for r in rows:
        notes = ", ".join(f"{k}={v}" for k, v in r["details"].items() if k != "tiers")
        if r["failures"]:
            notes += f"; NOT HELD: {r['failures'][:3]}"
        lines.append(
            f"{r['case']:<56} {r['tried']:>6} {r['passed']:>6} {r['throughput']:>8.2f} "
            f"{r['seconds']:>8.1f}  {notes}"
        )
    tried, held = sum(r["tried"] for r in rows), sum(r["passed"] for r in rows)
    lines.append("-" * len(head))
    lines.append(f"{'all scenarios':<56} {tried:>6} {held:>6}  ({sum(not r['ok'] for r in rows)} not held)")
    return "\n".join(lines)


def _store_scenarios(env: Env, args: argparse.Namespace) -> list[Any]:
    """The scenarios of tests.support.faults: concurrent clients, killed writers, restarts."""
    from ragcompress.kv.cache import ChunkCache
    from ragcompress.kv.store.disk import DiskStore
    from ragcompress.kv.store.memory import MemoryStore
    from ragcompress.kv.store.redis import RedisStore
    from ragcompress.kv.store.tiered import TieredStore
    from tests.support.faults import concurrent_clients, damaged_tiers, killed_writer, redis_restart

    url, server, encoder = env.redis.url, env.redis, env.encoder
    out = [
        concurrent_clients(url, env.model_dir, PASSAGES, args.processes, args.rounds, per_request=3),
        killed_writer(str(env.fresh("killed")), kills=args.kills, keys=3),
        killed_writer(url, kills=args.kills, keys=3),
    ]
    plain = ChunkCache(encoder, RedisStore(url, tenant="restart", retries=2, backoff_s=0.02))
    outcome = redis_restart(server, plain, PASSAGES, requests=args.requests)
    outcome.case += " (Redis only)"
    out.append(outcome)
    behind = TieredStore(
        [
            ("host", MemoryStore(1, "cpu")),
            ("remote", RedisStore(url, tenant="tiered", retries=1, backoff_s=0.02)),
        ]
    )
    outcome = redis_restart(server, ChunkCache(encoder, behind), PASSAGES, requests=args.requests)
    outcome.case += " (tiered: re-encodes)"
    out.append(outcome)
    stack = TieredStore(
        [
            ("host", MemoryStore(1 << 26, "cpu")),
            ("disk", DiskStore(env.fresh("tiers"))),
            ("remote", RedisStore(url, tenant="damage", secret="benchmark-secret-of-32-characters")),
        ]
    )
    out.append(damaged_tiers(stack, ChunkCache(encoder, stack), PASSAGES))
    return out


def _scenarios(args: argparse.Namespace) -> list[tuple[str, Callable[[Env], Any]]]:
    from benchmarks.faults import degrade, disk, inputs, integrity, load, threads

    return [
        ("store", lambda env: _store_scenarios(env, args)),
        ("integrity", integrity.planted_and_damaged),
        ("threads", threads.eight_threads),
        ("weights", integrity.weights_changed),
        ("disk", disk.disk_edges),
        ("degrade", degrade.degrade),
        ("urls", inputs.urls),
        ("cli", inputs.cli_errors),
        ("inputs", inputs.bad_inputs),
        ("load", lambda env: load.load(env, args.processes, args.per_process)),
    ]


def _meta(torch_version: str) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python " + " ".join(sys.argv),
        "commit": commit,
        "machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch_version}",
        "model": "tiny seeded Llama (2 layers, hidden 64) with the packaged SmolLM2 tokenizer",
        "redis": "redis-server on 127.0.0.1 (a free port), no persistence",
        # Other jobs on a shared machine slow every case: record how busy it was.
        "load_average": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--per-process", type=int, default=100, help="requests per process (load)")
    parser.add_argument("--rounds", type=int, default=3, help="requests per concurrent client")
    parser.add_argument("--kills", type=int, default=5, help="writer kills per backend")
    parser.add_argument("--requests", type=int, default=30, help="requests across a Redis restart")
    parser.add_argument("--quick", action="store_true", help="a few cases of each scenario")
    parser.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--verbose", action="store_true", help="show the library's warnings")
    args = parser.parse_args()
    # Degraded tiers log a warning per skipped call: thousands here, on purpose.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)

    import torch

    from tests.support.redis_local import LocalRedis

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="store-faults-") as tmp, LocalRedis() as server:
        env = make_env(Path(tmp), server, quick=args.quick)
        for name, scenario in _scenarios(args):
            if args.only and name not in args.only:
                continue
            print(f"{name} ...", flush=True)
            got = scenario(env)
            for outcome in got if isinstance(got, list) else [got]:
                rows.append(outcome.as_dict())
                print(
                    f"  {outcome.case}: {outcome.passed}/{outcome.tried} in {outcome.seconds:.1f} s",
                    flush=True,
                )
                for failure in outcome.failures[:5]:
                    print(f"    NOT HELD: {failure}", flush=True)

    table = _table(rows)
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(torch.__version__)
    (out / "store_faults.json").write_text(json.dumps({**meta, "cases": rows}, indent=2) + "\n")
    (out / "store_faults.txt").write_text(
        "\n".join(f"{k}: {v}" for k, v in meta.items()) + "\n\n" + table + "\n"
    )
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
