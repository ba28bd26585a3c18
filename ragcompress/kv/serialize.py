"""Chunk ⇄ bytes: a safetensors blob whose header metadata holds the key, the layer classes,
the format version and a SHA-256 checksum of the tensor payload. Shared by every store
(disk, Redis). Never pickle: a foreign or damaged blob raises :class:`ChunkFormatError`
with a reason, and the caller treats it as a miss.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import KVChunk, layer_class
from ragcompress.kv.key import FORMAT_VERSION, ChunkKey

if TYPE_CHECKING:
    import torch

__all__ = ["ChunkFormatError", "chunk_from_bytes", "chunk_to_bytes", "read_header"]

_MAGIC = "ragcompress.kvchunk"


class ChunkFormatError(ValueError):
    """A stored chunk that cannot be used; ``reason`` is short and goes into miss statistics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
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
        "shapes": json.dumps({k: list(v.shape) for k, v in tensors.items()}),
        "sha256": _checksum(tensors),
        **chunk.key.fields(),
    }
    return bytes(save(tensors, metadata=meta))


def read_header(data: bytes) -> dict[str, str]:
    """The metadata of a serialized chunk, without loading tensors."""
    if len(data) < 8:
        raise ChunkFormatError(f"truncated: {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ChunkFormatError(f"truncated: header of {n} bytes in a {len(data)}-byte blob")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChunkFormatError(f"corrupt header: {err}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("magic") != _MAGIC:
        raise ChunkFormatError("not a ragcompress chunk")
    return meta


def chunk_from_bytes(
    data: bytes, expected: ChunkKey | None = None, device: torch.device | str = "cpu"
) -> KVChunk:
    """Rebuild a chunk; raise :class:`ChunkFormatError` when it is damaged, of another format
    version, or not the chunk of ``expected``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = read_header(data)
    if meta.get("format") != str(FORMAT_VERSION):
        raise ChunkFormatError(f"foreign format version {meta.get('format')} (expected {FORMAT_VERSION})")
    try:
        key = ChunkKey.from_fields(meta)
    except (KeyError, ValueError) as err:
        raise ChunkFormatError(f"corrupt key metadata: {err}") from None
    if expected is not None:
        why = expected.mismatch(key)
        if why is not None:
            raise ChunkFormatError(why)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ChunkFormatError(f"unreadable payload: {err}") from None
    if _checksum(tensors) != meta.get("sha256"):
        raise ChunkFormatError("checksum mismatch")
    try:
        classes = json.loads(meta["layer_classes"])
        layer_meta = json.loads(meta["layer_meta"])
        layers = []
        for i, name in enumerate(classes):
            prefix = f"layers.{i}."
            local = {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}
            layers.append(layer_class(name).from_tensors(local, layer_meta[i]))
        return KVChunk(
            layers=layers,
            token_ids=tensors["token_ids"].to(device),
            base_offset=int(meta["base_offset"]),
            length=int(meta["length"]),
            key=key,
            model=meta["chunk.model"],
        )
    except (KeyError, ValueError, IndexError) as err:
        raise ChunkFormatError(f"inconsistent chunk: {err}") from None
