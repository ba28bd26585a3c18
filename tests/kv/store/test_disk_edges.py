"""The disk store under an unlucky or hostile filesystem: a FIFO or a directory at a chunk
path, a huge or padded file, a read-only shard, a deleted cache directory, a directory others
can write, a symlinked shard, and the byte cap. Each is a miss with a reason or a clear
error, never a hang, a wrong hit or an error on every later request."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ragcompress.kv.store.disk import DiskStore


def _bytes_read() -> int:
    """Bytes this process has read through read() so far (Linux /proc accounting)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_fifo_at_a_chunk_path_is_a_miss_not_a_hang(tmp_path: Path, chunks: list[Any], same: Any) -> None:
    store = DiskStore(tmp_path)
    c = chunks[0]
    path = store.path(c.key)
    path.parent.mkdir()
    os.mkfifo(path)
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(store.lookup(c.key)), daemon=True)
    reader.start()
    reader.join(60)  # a guard against hanging forever, not a timing check
    if reader.is_alive():  # blocked in open(): give it a writer so the test can end
        with open(path, "wb"):
            pass
        reader.join(10)
        pytest.fail("lookup blocked on a FIFO at the chunk path")
    assert result[0].chunk is None and result[0].reason == "not a regular file: a FIFO"
    store.put(c.key, c)  # the FIFO was moved aside, so the re-encoded chunk can be written
    found = store.lookup(c.key).chunk
    assert found is not None and same(found, c)


def test_directory_at_a_chunk_path_is_a_miss_then_replaced(
    tmp_path: Path, chunks: list[Any], same: Any
) -> None:
    store = DiskStore(tmp_path)
    c = chunks[1]
    store.path(c.key).mkdir(parents=True)
    found = store.lookup(c.key)
    assert found.chunk is None and found.reason == "not a regular file: a directory"
    store.put(c.key, c)
    again = store.lookup(c.key).chunk
    assert again is not None and same(again, c)


def test_a_huge_or_padded_file_is_never_read_whole(tmp_path: Path, chunks: list[Any]) -> None:
    c = chunks[0]
    store = DiskStore(tmp_path)
    store.put(c.key, c)
    path = store.path(c.key)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size + (256 << 20))  # sparse: 256 MiB of zeros after a valid chunk
    before = _bytes_read()
    found = store.lookup(c.key)
    assert found.chunk is None and found.reason.startswith("oversized"), found.reason
    assert _bytes_read() - before < (1 << 20) + size  # the header, not the 256 MiB
    store.put(c.key, c)
    capped = DiskStore(tmp_path, max_chunk_bytes=size // 2)
    before = _bytes_read()
    found = capped.lookup(c.key)
    assert found.chunk is None and found.reason.startswith("too large"), found.reason
    assert _bytes_read() - before < size // 2


def test_a_cut_file_is_a_miss_with_the_reason(tmp_path: Path, chunks: list[Any]) -> None:
    c = chunks[2]
    store = DiskStore(tmp_path)
    store.put(c.key, c)
    path = store.path(c.key)
    data = path.read_bytes()
    for cut in (0, 5, 200, len(data) - 1):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data[:cut])
        found = store.lookup(c.key)
        assert found.chunk is None and found.reason.startswith("truncated"), (cut, found.reason)


@pytest.mark.parametrize("ahead", [0, 2])
def test_a_cut_signed_envelope_is_a_miss_not_an_error(tmp_path: Path, chunks: list[Any], ahead: int) -> None:
    # a file that starts like an HMAC envelope but is cut inside it: the size check reads the
    # envelope's header, and its IntegrityError must be a miss (quarantined), on every path
    from ragcompress.kv.store.integrity import MAGIC

    store = DiskStore(tmp_path, read_ahead=ahead)
    for c in chunks[:2]:
        store.put(c.key, c)
    path = store.path(chunks[0].key)
    path.write_bytes(MAGIC + b"\x00\x00")
    got = store.lookup_many([chunks[0].key, chunks[1].key])
    assert got[0].chunk is None and got[0].reason.startswith("truncated"), got[0].reason
    assert got[1].chunk is not None
    assert not path.exists() and len(store.quarantined) == 1


@contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """Make ``directory``'s entries impossible to rename or remove, also for root when the
    filesystem supports the immutable attribute; skip when neither is possible."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a directory read-only")
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_quarantine_on_a_read_only_shard_never_raises(tmp_path: Path, chunks: list[Any]) -> None:
    store = DiskStore(tmp_path)
    c = chunks[0]
    store.put(c.key, c)
    path = store.path(c.key)
    data = bytearray(path.read_bytes())
    data[-9] ^= 0x10
    path.write_bytes(bytes(data))
    with _read_only(path.parent):
        for _ in range(2):  # a miss each time, never an exception
            found = store.lookup(c.key)
            assert found.chunk is None and found.reason.startswith("checksum mismatch")
        assert path.exists() and not store.quarantined


def test_quarantine_that_cannot_be_created_removes_the_file(tmp_path: Path, chunks: list[Any]) -> None:
    store = DiskStore(tmp_path)
    c = chunks[1]
    store.put(c.key, c)
    (tmp_path / "quarantine").write_text("not a directory")
    path = store.path(c.key)
    path.write_bytes(path.read_bytes()[:-10])
    found = store.lookup(c.key)
    assert found.chunk is None and found.reason.startswith("truncated")
    assert not path.exists() and store.lookup(c.key).reason == "absent"


def test_a_deleted_cache_directory_is_recreated_private(tmp_path: Path, chunks: list[Any], same: Any) -> None:
    root = tmp_path / "deep" / "chunks"
    store = DiskStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # /tmp/chunks is private to its creator
    store.put(chunks[0].key, chunks[0])
    for _ in range(2):  # deleted, written again; deleted with its parent, written again
        shutil.rmtree(tmp_path / "deep" if _ else root)
        assert store.lookup(chunks[0].key).reason == "absent"
        store.put(chunks[1].key, chunks[1])
        found = store.lookup(chunks[1].key).chunk
        assert found is not None and same(found, chunks[1])
        assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp itself: anyone can plant a chunk
    with pytest.raises(PermissionError, match="world-writable"):
        DiskStore(shared)
    assert DiskStore(shared, allow_shared_dir=True).directory == shared
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, os.geteuid() + 4242, -1)
    with pytest.raises(PermissionError, match="owned by uid"):
        DiskStore(theirs)
    # A private cache directory below the sticky, world-writable /tmp is fine.
    assert DiskStore(shared / "mine").directory.is_dir()


def test_a_symlinked_shard_does_not_send_writes_outside(tmp_path: Path, chunks: list[Any]) -> None:
    root, outside = tmp_path / "cache", tmp_path / "elsewhere"
    outside.mkdir()
    store = DiskStore(root)
    c = chunks[0]
    store.path(c.key).parent.symlink_to(outside, target_is_directory=True)
    with pytest.raises(PermissionError, match="outside the cache"):
        store.put(c.key, c)
    assert not list(outside.iterdir())
    (outside / store.path(c.key).name).write_bytes(b"planted")  # nor is anything read there
    found = store.lookup(c.key)
    assert found.chunk is None and "outside the cache" in found.reason


def test_byte_cap_sweeps_least_recently_used(tmp_path: Path, chunks: list[Any]) -> None:
    probe = DiskStore(tmp_path / "probe")
    sizes = []
    for c in chunks:
        probe.put(c.key, c)
        sizes.append(probe.path(c.key).stat().st_size)
    cap = sizes[0] + sizes[1] + sizes[2] + max(sizes) // 2  # room for three chunks, not four
    store = DiskStore(tmp_path / "capped", max_bytes=cap)
    for i, c in enumerate(chunks[:3]):
        store.put(c.key, c)
        os.utime(store.path(c.key), ns=(i * 10**9, i * 10**9))  # written in order 0, 1, 2
    assert store.lookup(chunks[0].key).chunk is not None  # 0 is used again: 1 is now the LRU
    store.put(chunks[3].key, chunks[3])
    files = list((tmp_path / "capped").rglob("*.safetensors"))
    assert sum(f.stat().st_size for f in files) <= cap and len(files) == 3
    assert not store.contains(chunks[1].key)
    assert all(store.contains(c.key) for c in (chunks[0], chunks[2], chunks[3]))
    assert store.stats.evictions == 1
    with pytest.raises(ValueError, match="max_bytes"):
        DiskStore(tmp_path / "bad", max_bytes=0)
