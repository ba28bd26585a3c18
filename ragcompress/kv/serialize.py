"""Chunk ⇄ bytes: a safetensors blob whose header metadata holds the key, the layer classes
and metadata, the format version and a checksum. Shared by every store (disk, Redis).

The checksum covers a canonical encoding of every header field (key strings, ``length``,
``base_offset``, ``chunk.model``, layer classes and metadata, format version) and of every
tensor (name, dtype, shape, bytes), so a damaged byte anywhere that changes what the blob
decodes to is caught. On load the stored token ids must also hash to the key's ``tokens``
(SHA-256: the key is a content address, where collisions would matter).

The checksum is XXH3-128 (format 3; format 2 used SHA-256). It only has to catch damage: being
unkeyed, it never stopped a forger who recomputes it, whatever the hash; that is what the
HMAC-SHA256 envelope of :mod:`ragcompress.kv.store.integrity` is for. SHA-256 took ~45% of a
verified read (95 ms per 160 MB on one core; XXH3-128: 4 ms).

Never pickle: a foreign or damaged blob raises :class:`ChunkFormatError` with a reason, and
the caller treats it as a miss.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

import xxhash

from ragcompress.kv.chunk import KVChunk, layer_class
from ragcompress.kv.key import FORMAT_VERSION, ChunkKey

if TYPE_CHECKING:
    import torch

__all__ = [
    "DIGEST_FIELD",
    "MAX_HEADER_BYTES",
    "ChunkFormatError",
    "blob_size",
    "chunk_from_bytes",
    "chunk_to_bytes",
    "header_length",
    "read_header",
]

_MAGIC = "ragcompress.kvchunk"
_DIGEST_DOMAIN = b"ragcompress.kvchunk.digest\x00"
# the header field that holds the checksum (not part of what it covers)
DIGEST_FIELD = "xxh3_128"
# Our headers are a few KiB; safetensors itself refuses more than 100 MB. A length field
# beyond this is damage, and reading it would mean allocating whatever the bytes claim.
MAX_HEADER_BYTES = 16 << 20


class ChunkFormatError(ValueError):
    """A stored chunk that cannot be used; ``reason`` is short and goes into miss statistics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _hasher(meta: Mapping[str, str]) -> xxhash.xxh3_128:
    """The checksum's state after the domain and the header fields (all but the checksum)."""
    h = xxhash.xxh3_128(_DIGEST_DOMAIN)
    head = {k: v for k, v in meta.items() if k != DIGEST_FIELD}
    h.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode())
    return h


def _digest(meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """XXH3-128 of the header fields (all but the checksum itself) and of every tensor."""
    import torch

    h = _hasher(meta)
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8)
        # Length-prefixed descriptor: no two (name, dtype, shape, bytes) sequences encode alike.
        desc = json.dumps([name, str(t.dtype), list(t.shape), raw.numel()]).encode()
        h.update(struct.pack("<Q", len(desc)) + desc)
        h.update(raw.numpy().data)  # the buffer itself: hashed in place, no copy
    return h.hexdigest()


# safetensors' dtype names, as str(torch dtype) writes them in the digest's descriptors
_DTYPE_NAMES = {
    "BOOL": "torch.bool", "U8": "torch.uint8", "I8": "torch.int8", "I16": "torch.int16",
    "I32": "torch.int32", "I64": "torch.int64", "F16": "torch.float16", "BF16": "torch.bfloat16",
    "F32": "torch.float32", "F64": "torch.float64",
}  # fmt: skip


def _blob_digest(meta: Mapping[str, str], header: Mapping[str, object], data: bytes) -> str | None:
    """:func:`_digest` of a blob, read from the blob itself: each tensor's descriptor from the
    header and its bytes hashed in place by its data offsets, so no tensor is built and nothing
    is copied (the tensors' bytes are what safetensors would load, bit for bit). ``header``
    must have passed safetensors' own checks (offsets in range). None when a dtype is not one
    named here: the caller then hashes the loaded tensors."""
    h = _hasher(meta)
    view, start = memoryview(data), 8 + header_length(data)
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_NAMES:
            return None
        dtype = _DTYPE_NAMES[entry["dtype"]]
        b, e = entry["data_offsets"]
        desc = json.dumps([name, dtype, list(entry["shape"]), e - b]).encode()
        h.update(struct.pack("<Q", len(desc)) + desc)
        h.update(view[start + b : start + e])
    return h.hexdigest()


def chunk_to_bytes(chunk: KVChunk) -> bytes:
    """Serialize a chunk (tensors copied to CPU)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {"token_ids": chunk.token_ids}
    classes: list[str] = []
    layer_meta: list[dict[str, str]] = []
    for i, layer in enumerate(chunk.layers):
        classes.append(layer.layer_name)
        layer_meta.append(layer.meta())
        for name, t in layer.tensors().items():
            tensors[f"layers.{i}.{name}"] = t
    # clone: safetensors refuses tensors sharing storage (e.g. one positions tensor for all layers)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {
        "magic": _MAGIC,
        "format": str(FORMAT_VERSION),
        "base_offset": str(chunk.base_offset),
        "length": str(chunk.length),
        "chunk.model": chunk.model,
        "layer_classes": json.dumps(classes),
        "layer_meta": json.dumps(layer_meta),
        **chunk.key.fields(),
    }
    meta[DIGEST_FIELD] = _digest(meta, tensors)
    return bytes(save(tensors, metadata=meta))


def header_length(prefix: bytes) -> int:
    """The safetensors header length that the first 8 bytes of a blob declare (bounded)."""
    if len(prefix) < 8:
        raise ChunkFormatError(f"truncated: {len(prefix)} bytes")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise ChunkFormatError(f"corrupt header: claims {n} bytes (limit {MAX_HEADER_BYTES})")
    return int(n)


def _parse_header(data: bytes) -> dict[str, object]:
    n = header_length(data)
    if n > len(data) - 8:
        raise ChunkFormatError(f"truncated: header of {n} bytes in a {len(data)}-byte blob")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChunkFormatError(f"corrupt header: {err}") from None
    if not isinstance(header, dict):
        raise ChunkFormatError("corrupt header: not a JSON object")
    return header


def read_header(data: bytes) -> dict[str, str]:
    """The metadata of a serialized chunk, without loading tensors."""
    return _metadata(_parse_header(data))


def _metadata(header: Mapping[str, object]) -> dict[str, str]:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("magic") != _MAGIC:
        raise ChunkFormatError("not a ragcompress chunk")
    return meta


def blob_size(prefix: bytes) -> int:
    """The whole blob's size as its header declares it, from a prefix holding the header
    (``8 + header_length(prefix)`` bytes): lets a reader refuse a cut or padded file before
    reading its tensors."""
    header = _parse_header(prefix)
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ChunkFormatError(f"corrupt header: tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    return 8 + header_length(prefix) + end


def chunk_from_bytes(
    data: bytes,
    expected: ChunkKey | None = None,
    device: torch.device | str = "cpu",
    *,
    authenticated: bool = False,
) -> KVChunk:
    """Rebuild a chunk; raise :class:`ChunkFormatError` when it is damaged, of another format
    version, or not the chunk of ``expected``.

    ``authenticated``: the caller has verified an HMAC over exactly these bytes, so the
    digest (which it subsumes) is not recomputed; every other check still runs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    header = _parse_header(data)
    meta = _metadata(header)
    if meta.get("format") != str(FORMAT_VERSION):
        raise ChunkFormatError(f"foreign format version {meta.get('format')} (expected {FORMAT_VERSION})")
    try:
        key = ChunkKey.from_fields(meta)
    except (KeyError, ValueError, TypeError) as err:
        raise ChunkFormatError(f"corrupt key metadata: {err}") from None
    if expected is not None:
        why = expected.mismatch(key)
        if why is not None:
            raise ChunkFormatError(why)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ChunkFormatError(f"unreadable payload: {err}") from None
    if not authenticated:
        # from the blob's bytes in place: ~3x less time than hashing the loaded tensors
        digest = _blob_digest(meta, header, data)
        if (digest or _digest(meta, tensors)) != meta.get(DIGEST_FIELD):
            raise ChunkFormatError("checksum mismatch: header or tensors damaged")
    return _rebuild(meta, tensors, key, device)


def _rebuild(
    meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor], key: ChunkKey, device: torch.device | str
) -> KVChunk:
    import torch

    token_ids = tensors.get("token_ids")
    if token_ids is None or token_ids.dim() != 1 or token_ids.dtype not in (torch.int64, torch.int32):
        raise ChunkFormatError("inconsistent chunk: token_ids missing or not a 1-D integer tensor")
    why = key.tokens_mismatch(token_ids.tolist())
    if why is not None:
        raise ChunkFormatError(why)
    try:
        classes = json.loads(meta["layer_classes"])
        layer_meta = json.loads(meta["layer_meta"])
        # each layer's tensors, grouped in one pass ("layers.{i}.{name}")
        local: list[dict[str, torch.Tensor]] = [{} for _ in classes]
        index = {str(i): i for i in range(len(classes))}
        for k, v in tensors.items():
            i, _, name = k.removeprefix("layers.").partition(".")
            if k.startswith("layers.") and i in index:
                local[index[i]][name] = v.to(device)
        layers = [layer_class(name).from_tensors(local[i], layer_meta[i]) for i, name in enumerate(classes)]
        chunk = KVChunk(
            layers=layers,
            token_ids=token_ids.to(device),
            base_offset=int(meta["base_offset"]),
            length=int(meta["length"]),
            key=key,
            model=meta["chunk.model"],
        )
    except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as err:
        raise ChunkFormatError(f"inconsistent chunk: {err}") from None
    # what assembly trusts: the passage's positions run from base_offset over its length tokens,
    # and a press only ever drops tokens (a digest-valid file from another writer may disagree)
    if chunk.base_offset < 0 or chunk.length != token_ids.numel() or chunk.num_tokens > chunk.length:
        raise ChunkFormatError(
            f"inconsistent chunk: base_offset {chunk.base_offset}, length {chunk.length}, "
            f"{token_ids.numel()} token ids, {chunk.num_tokens} tokens kept"
        )
    return chunk
