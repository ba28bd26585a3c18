"""Chunk ⇄ bytes and the stores: pure tensors, no model."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import torch

from ragcompress.kv import serialize
from ragcompress.kv.chunk import ChunkLayer, DenseLayer, KVChunk, register_layer
from ragcompress.kv.key import ChunkKey, tokens_digest
from ragcompress.kv.serialize import ChunkFormatError, chunk_from_bytes, chunk_to_bytes
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.kv.store.tiered import TieredStore


@register_layer("test-halfkeys")
@dataclass(frozen=True, eq=False)
class HalfKeysLayer(ChunkLayer):
    """A non-dense layer class (keys stored in fp16 with a scale) to check the layer registry."""

    keys16: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    scale: float

    def dense(self):
        return self.keys16.float() * self.scale, self.values, self.positions

    def tensors(self):
        return {"keys16": self.keys16, "values": self.values, "positions": self.positions}

    def meta(self):
        return {"scale": repr(self.scale)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]):
        return cls(tensors["keys16"], tensors["values"], tensors["positions"], float(meta["scale"]))

    @property
    def num_tokens(self):
        return int(self.keys16.shape[1])


def make_chunk(seed: int = 0, n: int = 6, layers: int = 3, dtype=torch.float32, model="m:1") -> KVChunk:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (n,), generator=g)
    key = ChunkKey(model=model, layout="lay", presses="[]", tokens=tokens_digest(ids.tolist()))
    pos = (torch.arange(n) + 12)[None].expand(2, -1).clone()
    out: list[ChunkLayer] = []
    for i in range(layers):
        k = torch.randn(2, n, 8, generator=g).to(dtype)
        v = torch.randn(2, n, 8, generator=g).to(dtype)
        out.append(HalfKeysLayer(k.half(), v, pos, 0.5) if i == 1 else DenseLayer(k, v, pos))
    return KVChunk(layers=out, token_ids=ids, base_offset=12, length=n, key=key, model=model)


def assert_same(a: KVChunk, b: KVChunk) -> None:
    assert (a.key, a.model, a.base_offset, a.length) == (b.key, b.model, b.base_offset, b.length)
    assert torch.equal(a.token_ids, b.token_ids)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert type(la) is type(lb)
        for x, y in zip(la.dense(), lb.dense(), strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_roundtrip_is_bit_exact(dtype):
    chunk = make_chunk(dtype=dtype)
    assert_same(chunk, chunk_from_bytes(chunk_to_bytes(chunk), expected=chunk.key))


def test_damaged_blobs_are_rejected_with_reasons():
    chunk = make_chunk()
    blob = chunk_to_bytes(chunk)
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF  # inside the last tensor's bytes
    with pytest.raises(ChunkFormatError, match="checksum"):
        chunk_from_bytes(bytes(flipped))
    for cut in (3, 40, len(blob) - 7):
        with pytest.raises(ChunkFormatError):
            chunk_from_bytes(blob[:cut])
    with pytest.raises(ChunkFormatError, match="other model"):
        chunk_from_bytes(blob, expected=make_chunk(model="other:2").key)
    with pytest.raises(ChunkFormatError, match="not a ragcompress chunk"):
        from safetensors.torch import save

        chunk_from_bytes(save({"x": torch.zeros(3)}))


def test_damage_is_caught_in_place_and_by_the_tensors_fallback(monkeypatch):
    # the digest is read from the blob's bytes in place; a dtype it cannot name falls back to
    # hashing the loaded tensors: both accept the good blob and catch one flipped byte anywhere
    chunk = make_chunk(dtype=torch.bfloat16)
    blob = chunk_to_bytes(chunk)
    start = 8 + serialize.header_length(blob)
    for names in (serialize._DTYPE_NAMES, {}):
        monkeypatch.setattr(serialize, "_DTYPE_NAMES", names)
        assert_same(chunk, chunk_from_bytes(blob, expected=chunk.key))
        for at in (start, (start + len(blob)) // 2, len(blob) - 1):
            flipped = bytearray(blob)
            flipped[at] ^= 0x01
            with pytest.raises(ChunkFormatError, match="checksum"):
                chunk_from_bytes(bytes(flipped))


def _with_header(blob: bytes, edit) -> bytes:
    """``blob`` with its safetensors header JSON passed through ``edit`` (lengths fixed up)."""
    import json
    import struct

    n = serialize.header_length(blob)
    header = edit(json.loads(blob[8 : 8 + n]))
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + blob[8 + n :]


@pytest.mark.parametrize(
    "offsets", ["x", [1], [0, "a"], None, {"0": 1}], ids=["str", "one", "not-int", "null", "dict"]
)
def test_malformed_offsets_are_a_format_error(offsets):
    # a malformed header entry is a ChunkFormatError with a reason, never a TypeError
    chunk = make_chunk()

    def edit(header):
        header["token_ids"]["data_offsets"] = offsets
        return header

    with pytest.raises(ChunkFormatError, match=r"corrupt header|unreadable payload"):
        chunk_from_bytes(_with_header(chunk_to_bytes(chunk), edit))


@pytest.mark.parametrize("how", ["past the end", "overlap", "gap", "size", "shape"])
def test_a_header_that_does_not_describe_the_payload_is_refused(how):
    # the digest is read through the header's offsets: a header that does not describe the
    # payload must be refused, never hashed or built from
    chunk = make_chunk()

    def edit(header):
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        first, second, last = names[0], names[1], names[-1]
        b, e = header[first]["data_offsets"]
        if how == "past the end":
            header[last]["data_offsets"][1] += 10**6
        elif how in ("overlap", "gap"):
            shift = -1 if how == "overlap" else 1
            header[second]["data_offsets"] = [o + shift for o in header[second]["data_offsets"]]
        elif how == "size":
            header[first]["data_offsets"] = [b, e - 1]
        else:
            header[first]["shape"] = [*header[first]["shape"], 2]
        return header

    with pytest.raises(ChunkFormatError, match=r"corrupt header|truncated|unreadable payload"):
        chunk_from_bytes(_with_header(chunk_to_bytes(chunk), edit))


def test_foreign_format_version(monkeypatch):
    chunk = make_chunk()
    monkeypatch.setattr(serialize, "FORMAT_VERSION", 999)
    blob = chunk_to_bytes(chunk)
    monkeypatch.undo()
    with pytest.raises(ChunkFormatError, match="foreign format version 999"):
        chunk_from_bytes(blob)


def test_memory_store_evicts_least_recently_used_by_bytes():
    chunks = [make_chunk(seed=i) for i in range(4)]
    size = chunks[0].nbytes
    store = MemoryStore(max_bytes=3 * size)
    for c in chunks[:3]:
        store.put(c.key, c)
    assert store.get(chunks[0].key) is not None  # 0 is now most recent; 1 is the LRU
    store.put(chunks[3].key, chunks[3])
    assert store.nbytes <= 3 * size and len(store) == 3
    assert not store.contains(chunks[1].key)
    assert all(store.contains(c.key) for c in (chunks[0], chunks[2], chunks[3]))
    assert store.stats.evictions == 1
    assert store.lookup(chunks[1].key).reason == "absent"
    tiny = MemoryStore(max_bytes=size // 2)
    tiny.put(chunks[0].key, chunks[0])  # larger than the whole budget: not kept, no error
    assert len(tiny) == 0 and tiny.nbytes == 0


def test_disk_store_roundtrip_and_reopen(tmp_path):
    chunk = make_chunk()
    DiskStore(tmp_path).put(chunk.key, chunk)
    again = DiskStore(tmp_path)  # a fresh store over the same directory
    assert_same(chunk, again.get(chunk.key))
    assert len(again) == 1
    assert not list(tmp_path.rglob("*.tmp")), "temp files must not be left behind"


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_disk_store_damaged_file_is_a_miss_and_quarantined(tmp_path, damage, monkeypatch):
    chunk = make_chunk()
    store = DiskStore(tmp_path)
    store.put(chunk.key, chunk)
    path = store.path(chunk.key)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-3] + bytes(b ^ 0x55 for b in data[-3:]))
    else:
        monkeypatch.setattr(serialize, "FORMAT_VERSION", 0)
        store.put(chunk.key, chunk)
        monkeypatch.undo()
    found = store.lookup(chunk.key)
    assert found.chunk is None and found.reason not in ("", "absent")
    assert sum(store.stats.misses.values()) == 1
    assert not path.exists() and store.quarantined
    store.put(chunk.key, chunk)  # re-encoded chunk replaces it
    assert_same(chunk, store.get(chunk.key))


def test_disk_store_unwritable_directory_fails_at_construction(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot be created"):
        DiskStore(blocker / "cache")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                DiskStore(ro)
        finally:
            ro.chmod(0o700)


def test_tiered_store_promotes_disk_hits(tmp_path):
    chunk = make_chunk()
    DiskStore(tmp_path).put(chunk.key, chunk)
    tiered = TieredStore([("memory", MemoryStore(1 << 20)), ("disk", DiskStore(tmp_path))])
    assert not tiered.tier("memory").contains(chunk.key)
    assert_same(chunk, tiered.get(chunk.key))
    assert tiered.tier("memory").contains(chunk.key)
    assert tiered.remove(chunk.key) and not tiered.contains(chunk.key)


def test_chunk_key_hash_is_its_fields():
    """Keys equal field for field are one dict key (the GPU pool and the caches look chunks up
    by them), a key differing in one field is another, and a replaced key hashes as new."""
    a = ChunkKey(model="m", layout="lay", presses="[]", tokens=tokens_digest([1, 2, 3]))
    b = ChunkKey(model="m", layout="lay", presses="[]", tokens=tokens_digest([1, 2, 3]))
    c = dataclasses.replace(a, tokens=tokens_digest([1, 2, 4]))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert c != a and c not in {a: 1}
    assert hash(c) == hash(ChunkKey(model="m", layout="lay", presses="[]", tokens=tokens_digest([1, 2, 4])))
    assert a.digest == b.digest != c.digest and "_hash" not in repr(a)


def test_chunk_key_pickled_into_another_process_hashes_there(tmp_path):
    """A key pickled in one process (another hash seed: strings hash differently) finds the
    equal key's entry in the other: its cached hash is taken again there, not carried."""
    import pickle
    import subprocess
    import sys

    key = ChunkKey(model="m", layout="lay", presses="[]", tokens=tokens_digest([7, 8]))
    (tmp_path / "key.pkl").write_bytes(pickle.dumps(key))
    check = (
        "import pickle, sys\n"
        "from ragcompress.kv.key import ChunkKey, tokens_digest\n"
        "k = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "here = ChunkKey(model='m', layout='lay', presses='[]', tokens=tokens_digest([7, 8]))\n"
        "assert k == here and hash(k) == hash(here) and {here: 1}[k] == 1\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", check, str(tmp_path / "key.pkl")], check=True, env=env)
    import copy

    assert copy.deepcopy(key) == key and hash(copy.copy(key)) == hash(key)
