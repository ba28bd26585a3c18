"""(4) The disk store on an unlucky or hostile filesystem: each case is answered right (a miss
with a reason, a clear refusal), never a hang, a wrong hit or an error on every later request."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from benchmarks.faults.common import Env, Tally, same_chunk
from tests.support.faults import Outcome

__all__ = ["disk_edges"]


def _answered(env: Env, store: Any, passage: str) -> str | None:
    """Two requests through a cache over ``store``: both return the passage's own chunk."""
    from ragcompress.kv.cache import ChunkCache

    want = env.encoder.encode([passage])[0]
    cache = ChunkCache(env.encoder, store)
    for attempt in range(2):
        got, stats = cache.get_or_encode([passage])
        if not same_chunk(got[0], want):
            return f"request {attempt}: WRONG chunk (stats {stats.as_dict()})"
    return None


def _deleted(env: Env, parents: bool) -> str | None:
    from ragcompress.kv.store.disk import DiskStore

    top = env.fresh("deleted")
    root = top / "deep" / "chunks"
    store = DiskStore(root)
    first = env.encoder.encode(env.passages[:1])[0]
    store.put(first.key, first)
    shutil.rmtree(top if parents else root)
    if problem := _answered(env, store, env.passages[1]):
        return problem
    if not store.contains(env.encoder.encode(env.passages[1:2])[0].key):
        return "the directory was not recreated (nothing stored)"
    mode = root.stat().st_mode & 0o777
    return None if mode == 0o700 else f"recreated with mode {mode:#o}, not 0o700"


def _at_chunk_path(env: Env, kind: str) -> str | None:
    from ragcompress.kv.store.disk import DiskStore

    store = DiskStore(env.fresh("odd"))
    passage = env.passages[2] + f" ({kind})"
    path = store.path(env.encoder.encode([passage])[0].key)
    path.parent.mkdir(mode=0o700)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(_answered(env, store, passage)), daemon=True)
    worker.start()
    worker.join(60)  # a guard against a hang, not a timing check
    if worker.is_alive():
        with open(path, "wb"):  # unblock the reader so the benchmark can end
            pass
        worker.join(10)
        return "HANG: the lookup blocked on a FIFO at the chunk path"
    return result[0]


def _read_only_shard(env: Env, tally: Tally) -> None:
    """A damaged chunk in a shard nobody may rename or remove from: a miss every time, no raise."""
    from ragcompress.kv.store.disk import DiskStore

    store = DiskStore(env.fresh("readonly"))
    chunk = env.encoder.encode(env.passages[3:4])[0]
    store.put(chunk.key, chunk)
    path = store.path(chunk.key)
    data = bytearray(path.read_bytes())
    data[-9] ^= 0x10
    path.write_bytes(bytes(data))
    if os.geteuid() == 0:  # root ignores modes: only the immutable attribute stops it
        made = subprocess.run(["chattr", "+i", str(path.parent)], capture_output=True, check=False)
        if shutil.which("chattr") is None or made.returncode:
            tally.skip("read-only shard", f"chattr +i unavailable: {made.stderr.decode().strip()[:80]}")
            return
        undo = ["chattr", "-i", str(path.parent)]
    else:
        path.parent.chmod(0o500)
        undo = ["chmod", "700", str(path.parent)]
    try:
        tally.run("read-only shard: damaged chunk answered", lambda: _answered(env, store, env.passages[3]))
    finally:
        subprocess.run(undo, check=True)


def _shared_dir(env: Env, mode: int, owner_shift: int) -> str | None:
    from ragcompress.kv.store.disk import DiskStore

    d = env.fresh("shared")
    d.mkdir(mode=0o700)
    d.chmod(mode)
    if owner_shift:
        os.chown(d, os.geteuid() + owner_shift, -1)
    try:
        DiskStore(d)
    except PermissionError as err:
        if str(d) not in str(err):
            return f"refused without naming the directory: {err}"
        DiskStore(d, allow_shared_dir=True)  # accepted when sharing is intended
        return None
    return f"ACCEPTED a directory others can write (mode {mode:#o}, owner +{owner_shift})"


def _symlinked_shard(env: Env) -> str | None:
    from ragcompress.kv.store.disk import DiskStore

    root, outside = env.fresh("cache"), env.fresh("elsewhere")
    outside.mkdir()
    store = DiskStore(root)
    passage = env.passages[4] + " (symlinked shard)"
    path = store.path(env.encoder.encode([passage])[0].key)
    path.parent.symlink_to(outside, target_is_directory=True)
    (outside / path.name).write_bytes(b"planted")
    try:
        problem = _answered(env, store, passage)
    except PermissionError:  # refused loudly instead of answering: still nothing written outside
        problem = None
    written = [p.name for p in outside.iterdir() if p.name != path.name]
    return problem or (f"WROTE outside the cache: {written}" if written else None)


def _byte_cap(env: Env) -> str | None:
    from ragcompress.kv.store.disk import DiskStore

    probe = DiskStore(env.fresh("probe"))
    chunk = env.encoder.encode(env.passages[:1])[0]
    probe.put(chunk.key, chunk)
    size = probe.path(chunk.key).stat().st_size
    cap = 3 * size + size // 2
    root = env.fresh("capped")
    store = DiskStore(root, max_bytes=cap)
    for p in env.passages:
        if problem := _answered(env, store, p):
            return problem
    total = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    if total > cap:
        return f"{total} bytes on disk over the cap of {cap}"
    return None if store.stats.evictions else "nothing was evicted"


def _oversized(env: Env) -> str | None:
    from ragcompress.kv.store.disk import DiskStore

    store = DiskStore(env.fresh("huge"))
    chunk = env.encoder.encode(env.passages[5:6])[0]
    store.put(chunk.key, chunk)
    with open(store.path(chunk.key), "r+b") as f:
        f.truncate(f.seek(0, 2) + (256 << 20))  # sparse: 256 MiB of zeros after a valid chunk
    found = store.lookup(chunk.key)
    if found.chunk is not None or not found.reason:
        return f"a padded file was accepted: {found.reason!r}"
    return _answered(env, store, env.passages[5])


def disk_edges(env: Env) -> Outcome:
    tally = Tally("(4) disk store edge cases")
    tally.run("cache dir deleted", lambda: _deleted(env, parents=False))
    tally.run("cache dir deleted with its parents", lambda: _deleted(env, parents=True))
    tally.run("FIFO at a chunk path", lambda: _at_chunk_path(env, "fifo"))
    tally.run("directory at a chunk path", lambda: _at_chunk_path(env, "dir"))
    if not env.quick:
        _read_only_shard(env, tally)
        tally.run("world-writable dir refused", lambda: _shared_dir(env, 0o777, 0))
        tally.run("sticky world-writable dir refused", lambda: _shared_dir(env, 0o1777, 0))
        tally.run("dir owned by another user refused", lambda: _shared_dir(env, 0o700, 4242))
        tally.run("oversized (padded) file", lambda: _oversized(env))
    tally.run("symlinked shard: nothing written outside", lambda: _symlinked_shard(env))
    tally.run("byte cap held, LRU swept", lambda: _byte_cap(env))
    return tally.done()
