"""Reading a request's chunks back from a DiskStore (the cache's disk tier), tree against tree.

Each case is a context of 512-token passages in Llama-3-8B's KV shape (32 layers, 8 KV heads,
128 channels), stored as ``bench ttft``'s disk column stores them (kvzip 0.6 + int4/64) or dense
bf16. Each checkout named by ``--trees`` writes the same chunks once, in its own chunk format (so
trees of different formats compare), then reads them in a process of its own (``--rounds``
times, the trees taking turns), both ways a store offers:
``lookup`` one key after another, and ``lookup_many`` (an older tree's is the same loop; a tree
whose store reads ahead also at 0, 1 and 2 reading threads). Beside them, the floors on this
machine: the files' bytes read and nothing else, and read + SHA-256 or + XXH3-128 on one thread
(the least a verified read costs without threads, in chunk format 2 and 3). Cold: the page
cache dropped before every pass (root on Linux; the table says when it could not be); warm: the
files already in it. Median ms of ``--repeats`` passes.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/store_read.py \\
        --trees /tmp/before,. --out benchmarks/results/store_read

(``git worktree add /tmp/before <commit>`` makes an older tree to compare with.)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash
from ragcompress_bench.ttft_host import drop_page_cache

LAYERS, KV_HEADS, HEAD_DIM, PASSAGE, PREFIX = 32, 8, 128, 512, 64


def _chunks(context: int, compressed: bool) -> list[Any]:
    """``context // 512`` chunks of random K/V; compressed: kvzip 0.6 (random scores: which
    tokens survive does not matter here, only how many) then int4 in groups of 64."""
    import torch

    from ragcompress.kv.chunk import DenseLayer, KVChunk
    from ragcompress.kv.key import ChunkKey, tokens_digest
    from ragcompress.kv.presses.kvzip import KVzipPress
    from ragcompress.kv.presses.quantize import QuantizePress

    zip_, quant = KVzipPress(ratio=0.6), QuantizePress(bits=4, group_size=64)
    g = torch.Generator().manual_seed(context + compressed)
    out = []
    for c in range(context // PASSAGE):
        ids = torch.randint(0, 32000, (PASSAGE,), generator=g)
        start = PREFIX + c * PASSAGE
        pos = torch.arange(start, start + PASSAGE).expand(KV_HEADS, PASSAGE).contiguous()
        layers: list[Any] = []
        for li in range(LAYERS):
            k, v = (torch.randn(KV_HEADS, PASSAGE, HEAD_DIM, generator=g).bfloat16() for _ in range(2))
            layer: Any = DenseLayer(k, v, pos)
            if compressed:
                attn = torch.rand(KV_HEADS, 1, PASSAGE, generator=g)
                layer = quant(zip_(layer, layer_idx=li, attn=attn), layer_idx=li, attn=None)
            layers.append(layer)
        digest = tokens_digest(ids.tolist())
        key = ChunkKey(model="bench", layout="bench", presses=str(compressed), tokens=digest)
        out.append(KVChunk(layers, ids, start, PASSAGE, key, "bench"))
    return out


def _drop_page_cache() -> bool:
    """Whether the page cache could be dropped (bench ttft's disk column drops it the same way)."""
    return drop_page_cache().startswith("dropped")


def _median_ms(fn: Callable[[], object], repeats: int, cold: bool) -> float:
    runs = []
    for _ in range(repeats):
        if cold:
            _drop_page_cache()
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(runs), 1)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.safetensors") if "quarantine" not in p.parts)


def _floors(directory: Path, repeats: int, cold: bool) -> dict[str, float]:
    files = _files(directory)

    def read() -> None:
        for p in files:
            p.read_bytes()

    def read_hash(hasher: Callable[[bytes], Any]) -> Callable[[], None]:
        def go() -> None:
            for p in files:
                hasher(p.read_bytes()).digest()

        return go

    return {
        "read_ms": _median_ms(read, repeats, cold),
        "read_sha256_ms": _median_ms(read_hash(hashlib.sha256), repeats, cold),
        "read_xxh3_ms": _median_ms(read_hash(xxhash.xxh3_128), repeats, cold),
    }


def measure(directory: Path, keys_file: Path, repeats: int, cold: bool) -> dict[str, Any]:
    """In the tree on ``sys.path``: ms to read every key of ``keys_file`` one by one, in one
    ``lookup_many`` as the store is built by default, and, where the store has ``read_ahead``,
    in one ``lookup_many`` at each of 0, 1 and 2 reading threads."""
    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.store.disk import DiskStore

    keys = [ChunkKey.from_fields(f) for f in json.loads(keys_file.read_text())]
    store = DiskStore(directory)

    def one_by_one() -> None:
        assert all(store.lookup(k).chunk is not None for k in keys)

    def batched(s: Any) -> None:
        assert all(found.chunk is not None for found in s.lookup_many(keys))

    one_by_one()  # untimed: the lazy imports and the first allocations
    out = {
        "lookup_ms": _median_ms(one_by_one, repeats, cold),
        "lookup_many_ms": _median_ms(lambda: batched(store), repeats, cold),
    }
    if hasattr(store, "read_ahead"):
        for ahead in (0, 1, 2):
            ra = DiskStore(directory, read_ahead=ahead)  # type: ignore[call-arg]
            out[f"read_ahead_{ahead}_ms"] = _median_ms(functools.partial(batched, ra), repeats, cold)
    return out


def write(directory: Path, context: int, compressed: bool) -> None:
    """In the tree on ``sys.path``: one case's chunks in a DiskStore under ``directory/store``, and
    their keys in ``directory/keys.json``."""
    from ragcompress.kv.store.disk import DiskStore

    chunks = _chunks(context, compressed)
    store = DiskStore(directory / "store")
    for c in chunks:
        store.put(c.key, c)
    (directory / "keys.json").write_text(json.dumps([c.key.fields() for c in chunks]))


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _child_write(tree: Path, directory: Path, context: int, compressed: bool) -> None:
    """:func:`write` in a process that imports ragcompress from ``tree``."""
    cmd = [sys.executable, __file__, "--write", str(directory), str(context), "1" if compressed else "0"]
    subprocess.run(cmd, env=_env(tree), capture_output=True, text=True, check=True)


def _child(tree: Path, directory: Path, keys_file: Path, repeats: int, cold: bool) -> dict[str, Any]:
    """:func:`measure` in a process that imports ragcompress from ``tree``."""
    cmd = [sys.executable, __file__, "--repeats", str(repeats)]
    cmd += ["--measure", str(directory), str(keys_file), "1" if cold else "0"]
    out = subprocess.run(cmd, env=_env(tree), capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def _tree_label(tree: Path) -> str:
    """The commit of a checkout; a copy of the package alone (no ``.git`` of its own) goes by
    its directory's name."""
    if not (tree / ".git").exists():
        return tree.name
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=tree)
    return rev.stdout.strip() or tree.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default=".", help="checkouts to compare, comma-separated")
    ap.add_argument("--contexts", default="10240,32768", help="kvzip 0.6 + int4/64 contexts (tokens)")
    ap.add_argument("--dense-contexts", default="10240", help="dense bf16 contexts (tokens); '' for none")
    ap.add_argument("--repeats", type=int, default=3, help="passes a child times (median)")
    ap.add_argument("--rounds", type=int, default=1, help="turns of every tree (median of the children)")
    ap.add_argument("--out", type=Path, default=None, help="directory for store_read.json and .md")
    ap.add_argument("--measure", nargs=3, metavar=("DIR", "KEYS", "COLD"), help=argparse.SUPPRESS)
    ap.add_argument("--write", nargs=3, metavar=("DIR", "CONTEXT", "COMPRESSED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:  # the child: one tree, one case
        d, k, cold = args.measure
        print(json.dumps(measure(Path(d), Path(k), args.repeats, cold == "1")))
        return
    if args.write:  # the child that writes one case's files in its tree's format
        d, context, compressed = args.write
        write(Path(d), int(context), compressed == "1")
        return

    trees = [Path(t).resolve() for t in args.trees.split(",")]
    labels = [_tree_label(t) for t in trees]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"--trees: two trees have the same label {labels}; name their directories apart")
    cases = [(int(c), True) for c in args.contexts.split(",") if c]
    cases += [(int(c), False) for c in args.dense_contexts.split(",") if c]
    droppable = _drop_page_cache()
    rows: list[dict[str, Any]] = []
    for context, compressed in cases:
        with tempfile.TemporaryDirectory(prefix="store-read-") as tmp:
            # each tree writes the files itself: trees of different chunk formats read their own
            dirs = {label: Path(tmp) / f"tree{i}" for i, label in enumerate(labels)}
            for tree, label in zip(trees, labels, strict=True):
                _child_write(tree, dirs[label], context, compressed)
            first = dirs[labels[0]] / "store"
            size = sum(p.stat().st_size for p in _files(first))
            for cold in ([True] if droppable else []) + [False]:
                row: dict[str, Any] = {
                    "context": context,
                    "chunks": "kvzip 0.6 + int4/64" if compressed else "dense bf16",
                    "files": len(_files(first)),
                    "MB": round(size / 1e6, 1),
                    "page_cache": "dropped" if cold else "warm",
                    **_floors(first, args.repeats, cold),
                }
                runs: dict[str, list[float]] = {}
                for _ in range(args.rounds):  # the trees take turns: neither always goes first
                    for tree, label in zip(trees, labels, strict=True):
                        d = dirs[label]
                        got = _child(tree, d / "store", d / "keys.json", args.repeats, cold)
                        for k, v in got.items():
                            runs.setdefault(f"{label} {k}", []).append(v)
                row.update({k: round(statistics.median(v), 1) for k, v in runs.items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
    _report(rows, labels, args, droppable)


def _report(rows: list[dict[str, Any]], labels: list[str], args: argparse.Namespace, droppable: bool) -> None:
    """The rows as a markdown table (and JSON under ``--out``), with the run's command and machine."""
    cols = list(dict.fromkeys(k for r in rows for k in r))  # every column, in first-seen order
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "—")) for c in cols) + " |" for r in rows]
    lines += [
        "",
        f"`{' '.join(sys.argv)}`; {platform.node()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; page cache "
        + ("dropped before each cold pass." if droppable else "not droppable here (no cold rows)."),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "store_read.md").write_text("\n".join(lines) + "\n")
        meta = {"argv": sys.argv, "cpus": os.cpu_count(), "trees": labels, "rows": rows}
        (args.out / "store_read.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
