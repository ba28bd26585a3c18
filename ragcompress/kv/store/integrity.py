"""HMAC-SHA256 signing of stored chunk bytes, so that a shared store cannot feed us forged chunks.

A signed value is an envelope around the serialized chunk (the same bytes the disk store
writes)::

    MAGIC (8 bytes) | header length (4 bytes, big endian) | header (JSON) | MAC (32 bytes) | payload

The MAC covers magic, header length, header and payload. The header names the store
namespace, the tenant and the chunk key, so a valid envelope copied under another key or
into another tenant's namespace fails verification like a flipped byte does. Anything that
fails is a :class:`IntegrityError` with a reason; stores turn it into a miss, never a hit.

Every shared store (disk, Redis) signs when a secret is configured: passed as ``secret=`` or,
when none is passed, read from ``$RAGCOMPRESS_STORE_SECRET`` (:func:`resolve_secret`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ragcompress.kv.serialize import chunk_from_bytes

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.key import ChunkKey

__all__ = [
    "HEADER_PREFIX_BYTES",
    "MAGIC",
    "SECRET_ENV",
    "IntegrityError",
    "Signer",
    "envelope_size",
    "is_signed",
    "open_stored",
    "resolve_secret",
]

# The environment variable every store reads its HMAC secret from when none is passed.
SECRET_ENV = "RAGCOMPRESS_STORE_SECRET"
MAGIC = b"RCHMAC1\x00"
_LEN = struct.Struct(">I")
_MAC_BYTES = hashlib.sha256().digest_size
_MAX_HEADER = 64 * 1024


class IntegrityError(ValueError):
    """A stored value failed verification; ``reason`` says how (unsigned, truncated, bad MAC, …)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_signed(blob: bytes) -> bool:
    """Whether ``blob`` starts like a signed envelope."""
    return blob[: len(MAGIC)] == MAGIC


def resolve_secret(secret: bytes | str | None) -> bytes | str | None:
    """``secret``, else ``$RAGCOMPRESS_STORE_SECRET`` when set and non-empty, else None.

    One rule for every store, so that configuring the key once signs every shared tier.
    """
    if secret is not None:
        return secret
    return os.environ.get(SECRET_ENV) or None


def envelope_size(prefix: bytes) -> int:
    """The whole envelope's size as its header declares it, from a prefix that holds the
    header (at most ``HEADER_PREFIX_BYTES``). Not verified yet: only a bound on what to read."""
    start = len(MAGIC) + _LEN.size
    if not is_signed(prefix) or len(prefix) < start:
        raise IntegrityError("truncated: envelope shorter than its fixed header")
    (n_header,) = _LEN.unpack_from(prefix, len(MAGIC))
    if n_header > _MAX_HEADER or len(prefix) < start + n_header:
        raise IntegrityError("truncated: envelope shorter than its header")
    try:
        declared = json.loads(prefix[start : start + n_header]).get("len")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise IntegrityError("bad MAC: the envelope header is not JSON") from None
    if type(declared) is not int or declared < 0:
        raise IntegrityError("bad MAC: the envelope header declares no payload length")
    return start + n_header + _MAC_BYTES + declared


HEADER_PREFIX_BYTES = len(MAGIC) + _LEN.size + _MAX_HEADER


@dataclass(frozen=True)
class Signer:
    """Signs and verifies envelopes with one shared secret (``str`` is encoded as UTF-8).

    ``context`` is bound into every header: typically ``{"namespace": ..., "tenant": ...}``.
    """

    secret: bytes | str = field(repr=False)
    context: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw = self.secret.encode() if isinstance(self.secret, str) else bytes(self.secret)
        if len(raw) < 16:
            raise ValueError("the HMAC secret must be at least 16 bytes long")
        object.__setattr__(self, "_key", raw)

    def _mac(self, signed_part: bytes, payload: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)  # type: ignore[attr-defined]
        mac.update(signed_part)
        mac.update(payload)
        return mac.digest()

    def _header(self, key: str, payload_len: int) -> bytes:
        head = {"alg": "HMAC-SHA256", "key": key, "len": payload_len, **self.context}
        return json.dumps(head, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, key: str, payload: bytes) -> bytes:
        """The envelope for ``payload`` stored under ``key``."""
        header = self._header(key, len(payload))
        signed_part = MAGIC + _LEN.pack(len(header)) + header
        return signed_part + self._mac(signed_part, payload) + payload

    def verify(self, key: str, blob: bytes) -> bytes:
        """The payload of an envelope read back under ``key``; :class:`IntegrityError` if it fails."""
        if not is_signed(blob):
            raise IntegrityError("unsigned: the value carries no HMAC (written without the secret)")
        start = len(MAGIC) + _LEN.size
        if len(blob) < start:
            raise IntegrityError("truncated: envelope shorter than its fixed header")
        (n_header,) = _LEN.unpack_from(blob, len(MAGIC))
        if n_header > _MAX_HEADER or len(blob) < start + n_header + _MAC_BYTES:
            raise IntegrityError("truncated: envelope shorter than its header and MAC")
        signed_part = blob[: start + n_header]
        mac = blob[start + n_header : start + n_header + _MAC_BYTES]
        payload = blob[start + n_header + _MAC_BYTES :]
        # Check the MAC before parsing anything attacker-controlled.
        if not hmac.compare_digest(mac, self._mac(signed_part, payload)):
            raise IntegrityError("bad MAC: the value was altered or signed with another secret")
        header = json.loads(blob[start : start + n_header])
        if header.get("key") != key:
            raise IntegrityError(f"wrong key: signed for {header.get('key')!r}, read as {key!r}")
        for name, want in self.context.items():
            if header.get(name) != want:
                raise IntegrityError(f"wrong {name}: signed for {header.get(name)!r}, expected {want!r}")
        if header.get("len") != len(payload):
            raise IntegrityError(f"truncated: payload of {len(payload)} bytes, signed {header.get('len')}")
        return payload


def open_stored(data: bytes, key: ChunkKey, signer: Signer | None, device: torch.device | str) -> KVChunk:
    """The chunk in a value a shared store read back under ``key``: its HMAC envelope verified
    when the store has a secret (a signed value is refused when it has none), then the chunk
    checked and built (:func:`~ragcompress.kv.serialize.chunk_from_bytes`; its digest too,
    unless the MAC already covered it). Raises :class:`IntegrityError` or
    :class:`~ragcompress.kv.serialize.ChunkFormatError`."""
    if signer is not None:
        data = signer.verify(key.digest, data)
    elif is_signed(data):
        raise IntegrityError("signed chunk, but this store has no secret to verify it")
    return chunk_from_bytes(data, expected=key, device=device, authenticated=signer is not None)
