"""Every byte that changes what a stored chunk decodes to is covered: a damaged header field, a
header moved onto another passage's tensors, token ids that are not the key's, a forged or
unsigned file in a signed disk store: each is a miss with a reason, then re-encoded."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from ragcompress.kv.serialize import ChunkFormatError, chunk_from_bytes, chunk_to_bytes, read_header
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.integrity import is_signed
from ragcompress.kv.store.open import SECRET_ENV

SECRET = "a-disk-secret-of-32-characters!!"


def _edit_field(blob: bytes, name: str) -> bytes:
    """``blob`` with one character of header field ``name``'s value changed, lengths kept, so
    that the safetensors layout (offsets) stays valid and only the field's meaning changes."""
    n = int.from_bytes(blob[:8], "little")
    header = blob[8 : 8 + n]
    found = re.search(rb'"' + re.escape(name.encode()) + rb'":"((?:[^"\\]|\\.)*)"', header)
    assert found is not None, name
    value_at = found.start(1)
    value = range(value_at, found.end(1))
    i = next((j for j in value if chr(header[j]).isalnum()), value_at)  # "[]" has none: edit "["
    new = b"7" if header[i : i + 1].isdigit() and header[i : i + 1] != b"7" else b"x"
    if header[i : i + 1] == new:
        new = b"y"
    return blob[: 8 + i] + new + blob[8 + i + 1 :]


def test_every_header_field_is_covered(chunks: list[Any]) -> None:
    blob = chunk_to_bytes(chunks[0])
    fields = sorted(read_header(blob))
    assert {"length", "base_offset", "chunk.model", "layer_meta", "key.tokens"} <= set(fields)
    for name in fields:
        damaged = _edit_field(blob, name)
        assert damaged != blob and len(damaged) == len(blob)
        with pytest.raises(ChunkFormatError) as err:
            chunk_from_bytes(damaged)  # no expected key: only the stored check can catch it
        assert err.value.reason, name


@pytest.mark.parametrize("field", ["length", "base_offset", "chunk.model", "layer_classes"])
def test_damaged_header_on_disk_is_a_miss_quarantined_then_rewritten(
    tmp_path: Path, chunks: list[Any], same: Any, field: str
) -> None:
    store = DiskStore(tmp_path / "chunks")
    c = chunks[1]
    store.put(c.key, c)
    path = store.path(c.key)
    path.write_bytes(_edit_field(path.read_bytes(), field))
    found = store.lookup(c.key)
    assert found.chunk is None and found.reason.startswith("checksum mismatch"), found.reason
    assert not path.exists() and store.quarantined
    store.put(c.key, c)  # what the cache does after the miss
    again = store.lookup(c.key).chunk
    assert again is not None and same(again, c)


def _relabel(blob: bytes, old: str, new: str) -> bytes:
    assert len(old) == len(new) and blob.count(old.encode()) == 1
    return blob.replace(old.encode(), new.encode())


def test_header_key_moved_onto_another_passage_is_a_miss(tmp_path: Path, chunks: list[Any]) -> None:
    store = DiskStore(tmp_path / "chunks")
    a, b = chunks[0], chunks[2]
    store.put(a.key, a)
    # Passage a's file, its key strings edited to say passage b, planted where b is looked up.
    planted = _relabel(store.path(a.key).read_bytes(), a.key.tokens, b.key.tokens)
    store.path(b.key).parent.mkdir(exist_ok=True)
    store.path(b.key).write_bytes(planted)
    found = store.lookup(b.key)
    assert found.chunk is None and found.reason.startswith("checksum mismatch")


def test_stored_token_ids_must_be_the_keys(tmp_path: Path, chunks: list[Any]) -> None:
    # A well-formed file (digest recomputed) whose key says passage b but whose tokens and
    # tensors are passage a's: what a writer bug or a careless copy produces.
    a, b = chunks[0], chunks[3]
    mislabeled = dataclasses.replace(a, key=b.key)
    with pytest.raises(ChunkFormatError, match="token ids differ"):
        chunk_from_bytes(chunk_to_bytes(mislabeled), expected=b.key)
    store = DiskStore(tmp_path / "chunks")
    store.put(b.key, mislabeled)
    found = store.lookup(b.key)
    assert found.chunk is None and "token ids differ" in found.reason


def test_disk_store_signs_with_a_secret(tmp_path: Path, chunks: list[Any], same: Any) -> None:
    c, other = chunks[0], chunks[1]
    signed = DiskStore(tmp_path / "signed", secret=SECRET)
    signed.put(c.key, c)
    assert is_signed(signed.path(c.key).read_bytes())
    found = signed.lookup(c.key).chunk
    assert found is not None and same(found, c)
    # A reader without the secret cannot vouch for it ...
    miss = DiskStore(tmp_path / "signed").lookup(c.key)
    assert miss.chunk is None and "no secret" in miss.reason
    # ... and a signed store refuses a file planted without it (a well-formed, unsigned chunk).
    DiskStore(tmp_path / "plain").put(other.key, other)
    signed.path(other.key).parent.mkdir(exist_ok=True)
    signed.path(other.key).write_bytes(DiskStore(tmp_path / "plain").path(other.key).read_bytes())
    miss = signed.lookup(other.key)
    assert miss.chunk is None and miss.reason.startswith("unsigned")
    # A signed file copied under another key fails too.
    signed.put(c.key, c)
    signed.path(other.key).write_bytes(signed.path(c.key).read_bytes())
    miss = signed.lookup(other.key)
    assert miss.chunk is None and miss.reason.startswith("wrong key")


def test_disk_store_reads_the_secret_from_the_environment(
    tmp_path: Path, chunks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = chunks[0]
    monkeypatch.setenv(SECRET_ENV, SECRET)
    store = DiskStore(tmp_path)
    store.put(c.key, c)
    assert store.signer is not None and is_signed(store.path(c.key).read_bytes())
    assert DiskStore(tmp_path, secret=SECRET).lookup(c.key).chunk is not None
    monkeypatch.delenv(SECRET_ENV)
    assert "no secret" in DiskStore(tmp_path).lookup(c.key).reason


def test_other_model_or_format_is_a_miss(tmp_path: Path, chunks: list[Any]) -> None:
    c = chunks[0]
    store = DiskStore(tmp_path)
    foreign = dataclasses.replace(c, key=dataclasses.replace(c.key, model="other:0123456789abcdef"))
    path = store.path(c.key)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(chunk_to_bytes(foreign))
    assert "other model" in store.lookup(c.key).reason
    old = dataclasses.replace(c, key=dataclasses.replace(c.key, format=c.key.format - 1))
    path.write_bytes(chunk_to_bytes(old))
    assert "foreign format version" in store.lookup(c.key).reason
