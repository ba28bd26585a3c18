"""Load and fault scenarios of the shared chunk store, on a loopback redis-server and the tiny model.

    python benchmarks/store_faults.py [--processes 8] [--rounds 3] [--kills 5] [--out benchmarks/results]

Starts its own redis-server on 127.0.0.1 (a free port; nothing else is contacted), runs every
scenario of :mod:`ragcompress.kv.faults`, prints a table (case, tried, passed, throughput) and
writes ``store_faults.json`` and ``store_faults.txt`` under ``--out``. Exits 1 when a case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PASSAGES = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Danube flows through ten countries before reaching the Black Sea.",
    "Ada Lovelace wrote what is often called the first computer program.",
    "The Nile is the longest river in Africa.",
    "Mount Everest lies on the border of Nepal and China.",
    "Honey never spoils when it is stored sealed.",
    "Octopuses have three hearts and blue blood.",
]


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'case':<50} {'tried':>6} {'passed':>7} {'throughput/s':>13} {'seconds':>8}  notes"
    lines = [head, "-" * len(head)]
    for r in rows:
        notes = ", ".join(f"{k}={v}" for k, v in r["details"].items() if k != "tiers")
        if r["failures"]:
            notes += f"; FAIL: {r['failures'][:2]}"
        lines.append(
            f"{r['case']:<50} {r['tried']:>6} {r['passed']:>7} {r['throughput']:>13.2f} "
            f"{r['seconds']:>8.1f}  {notes}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="requests per client process")
    parser.add_argument("--kills", type=int, default=5, help="writer kills per backend")
    parser.add_argument("--requests", type=int, default=30, help="requests across a Redis restart")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch

    from ragcompress.kv.cache import ChunkCache
    from ragcompress.kv.disk_store import DiskStore
    from ragcompress.kv.encode import ChunkEncoder
    from ragcompress.kv.faults import concurrent_clients, damaged_tiers, killed_writer, redis_restart
    from ragcompress.kv.redis_local import LocalRedis
    from ragcompress.kv.redis_store import RedisStore
    from ragcompress.kv.tiered import MemoryTier, MultiTierStore
    from ragcompress.models import load_reader, load_tokenizer
    from ragcompress.testing import make_tiny_llama

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []

    def record(outcome: Any) -> None:
        rows.append(outcome.as_dict())
        print(f"  {outcome.case}: {outcome.passed}/{outcome.tried} in {outcome.seconds:.1f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="store-faults-") as tmp, LocalRedis() as server:
        model_dir = Path(tmp) / "tiny-model"
        tok = load_tokenizer()
        make_tiny_llama(len(tok)).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        lm, tok = load_reader(str(model_dir), "cpu")
        encoder = ChunkEncoder(lm, tok)
        url = server.url

        record(concurrent_clients(url, str(model_dir), PASSAGES, args.processes, args.rounds, per_request=3))
        record(killed_writer(str(Path(tmp) / "disk"), kills=args.kills, keys=3))
        record(killed_writer(url, kills=args.kills, keys=3))
        plain = ChunkCache(encoder, RedisStore(url, tenant="restart", retries=2, backoff_s=0.02))
        outcome = redis_restart(server, plain, PASSAGES, requests=args.requests)
        outcome.case += " (Redis only: errors)"
        record(outcome)
        behind = MultiTierStore(
            [("host", MemoryTier(1)), ("remote", RedisStore(url, tenant="tiered", retries=1, backoff_s=0.02))]
        )
        outcome = redis_restart(server, ChunkCache(encoder, behind), PASSAGES, requests=args.requests)
        outcome.case += " (tiered: re-encodes)"
        record(outcome)
        stack = MultiTierStore(
            [
                ("host", MemoryTier(1 << 26)),
                ("disk", DiskStore(Path(tmp) / "tiers")),
                ("remote", RedisStore(url, tenant="damage", secret="benchmark-secret-of-32-characters")),
            ]
        )
        record(damaged_tiers(stack, ChunkCache(encoder, stack), PASSAGES))

    table = _table(rows)
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "command": "python " + " ".join(sys.argv),
        "model": "tiny seeded Llama (2 layers, hidden 64) with the packaged SmolLM2 tokenizer",
        "redis": "redis-server on 127.0.0.1, no persistence",
        # Other jobs on a shared machine slow every case: record how busy it was.
        "load_average": round(os.getloadavg()[0], 1),
    }
    (out / "store_faults.json").write_text(json.dumps({**meta, "cases": rows}, indent=2) + "\n")
    (out / "store_faults.txt").write_text(
        "\n".join(f"{k}: {v}" for k, v in meta.items()) + "\n\n" + table + "\n"
    )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
