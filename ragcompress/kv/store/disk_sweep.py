"""The disk tier's byte cap: least recently used files go first until the total fits.

"Used" is the file's mtime: a write sets it and the store touches a file on every hit (atime
is unreliable under ``relatime``/``noatime``). Quarantined files go before any chunk (they are
kept only for inspection), and temp files left by a killed writer count and are removed once
they are old enough that no live writer can own them. Several processes may sweep one
directory at once: a file another sweeper removed first is simply skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CacheFile", "scan", "sweep"]

# A live writer renames its temp file within seconds; one this old was left by a dead one.
_STALE_TMP_S = 3600.0


@dataclass(frozen=True, slots=True)
class CacheFile:
    path: Path
    size: int
    used_ns: int
    rank: int  # 0: quarantined or stale temp, 1: chunk (evicted in that order, then by age)


def _files(directory: Path) -> list[tuple[os.DirEntry[str], int]]:
    out: list[tuple[os.DirEntry[str], int]] = []
    try:
        tops = list(os.scandir(directory))
    except OSError:
        return out
    for top in tops:
        if not top.is_dir(follow_symlinks=False):
            continue
        rank = 0 if top.name == "quarantine" else 1
        try:
            out.extend((e, rank) for e in os.scandir(top.path) if e.is_file(follow_symlinks=False))
        except OSError:
            continue
    return out


def scan(directory: Path, chunk_suffix: str) -> list[CacheFile]:
    """Every file the cap counts: chunks, quarantined files and temp files, one level deep."""
    now_ns = time.time_ns()
    found = []
    for entry, rank in _files(directory):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if rank == 1 and not entry.name.endswith(chunk_suffix):
            # a temp file: counted, and evicted first once its writer must be dead
            stale = now_ns - st.st_mtime_ns > _STALE_TMP_S * 1e9
            if not stale:
                found.append(CacheFile(Path(entry.path), st.st_size, st.st_mtime_ns, 2))
                continue
            rank = 0
        found.append(CacheFile(Path(entry.path), st.st_size, st.st_mtime_ns, rank))
    return found


def sweep(directory: Path, max_bytes: int, chunk_suffix: str, keep: Path | None = None) -> tuple[int, int]:
    """Remove files until the total is at most ``max_bytes``; never ``keep`` (the file just
    written) nor a live writer's temp file. Returns ``(files removed, bytes left)``."""
    files = scan(directory, chunk_suffix)
    total = sum(f.size for f in files)
    removed = 0
    for f in sorted(files, key=lambda f: (f.rank, f.used_ns)):
        if total <= max_bytes:
            break
        if f.rank == 2 or (keep is not None and f.path == keep):
            continue
        try:
            f.path.unlink()
        except FileNotFoundError:
            pass  # another process swept it first
        except OSError:
            continue  # cannot remove (read-only): it still counts
        total -= f.size
        removed += int(f.rank == 1)
    return removed, total
