"""HMAC integrity: forged, altered, unsigned or misplaced chunks are misses with a reason, never hits."""

from __future__ import annotations

from typing import Any

import pytest

from ragcompress.kv.store.integrity import IntegrityError, Signer, is_signed
from ragcompress.kv.store.redis import RedisStore

SECRET = "a-shared-secret-of-32-characters"


def _signer(tenant: str = "acme") -> Signer:
    return Signer(SECRET, {"namespace": "ragcompress", "tenant": tenant})


def test_sign_verify_round_trip() -> None:
    payload = bytes(range(256)) * 10
    blob = _signer().sign("k1", payload)
    assert is_signed(blob) and not is_signed(payload)
    assert _signer().verify("k1", blob) == payload


@pytest.mark.parametrize("where", ["header", "mac", "payload", "last"])
def test_any_flipped_byte_is_rejected(where: str) -> None:
    payload = b"x" * 1000
    blob = bytearray(_signer().sign("k1", payload))
    offset = {"header": 20, "mac": len(blob) - 1000 - 5, "payload": len(blob) - 500, "last": len(blob) - 1}
    blob[offset[where]] ^= 0x01
    with pytest.raises(IntegrityError) as err:
        _signer().verify("k1", bytes(blob))
    assert err.value.reason.startswith(("bad MAC", "truncated"))


def test_unsigned_truncated_wrong_secret_key_or_tenant() -> None:
    blob = _signer().sign("k1", b"payload" * 50)
    cases = {
        "unsigned": (_signer(), "k1", b"payload" * 50),
        "truncated": (_signer(), "k1", blob[:12]),
        "bad MAC": (Signer("another-secret-of-32-characters!", _signer().context), "k1", blob),
        "wrong key": (_signer(), "k2", blob),
        "wrong tenant": (_signer("globex"), "k1", blob),
    }
    for reason, (signer, key, data) in cases.items():
        with pytest.raises(IntegrityError) as err:
            signer.verify(key, data)
        assert err.value.reason.startswith(reason), (reason, err.value.reason)
    # A cut payload fails the MAC (the MAC covers the length in the header).
    with pytest.raises(IntegrityError, match="bad MAC"):
        _signer().verify("k1", blob[:-10])


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Signer("short")


def test_redis_signed_chunks_round_trip(redis_url: str, chunks: list[Any], same: Any) -> None:
    store = RedisStore(redis_url, tenant="acme", secret=SECRET)
    c = chunks[0]
    store.put(c.key, c)
    assert is_signed(bytes(store.client.get(store.redis_key(c.key))))
    found = store.lookup(c.key).chunk
    assert found is not None and same(found, c)


def test_redis_tampered_chunk_is_a_miss_then_rewritten(redis_url: str, chunks: list[Any], same: Any) -> None:
    store = RedisStore(redis_url, tenant="acme", secret=SECRET)
    c = chunks[0]
    store.put(c.key, c)
    rkey = store.redis_key(c.key)
    value = bytearray(store.client.get(rkey))
    value[-7] ^= 0x40  # one bit of one tensor byte
    store.client.set(rkey, bytes(value))
    found = store.lookup(c.key)
    assert found.chunk is None and found.reason.startswith("rejected: bad MAC")
    assert store.rejections["bad MAC: the value was altered or signed with another secret"] == 1
    store.put(c.key, c)  # what a cache does after the miss: re-encode and overwrite
    again = store.lookup(c.key).chunk
    assert again is not None and same(again, c)


def test_redis_unsigned_writer_is_rejected_by_signed_reader(redis_url: str, chunks: list[Any]) -> None:
    c = chunks[1]
    RedisStore(redis_url, tenant="acme").put(c.key, c)  # someone without the secret
    found = RedisStore(redis_url, tenant="acme", secret=SECRET).lookup(c.key)
    assert found.chunk is None and "unsigned" in found.reason
    # ... and the other way round: a reader without the secret cannot vouch for signed chunks.
    RedisStore(redis_url, tenant="acme", secret=SECRET).put(c.key, c)
    found = RedisStore(redis_url, tenant="acme").lookup(c.key)
    assert found.chunk is None and "no secret" in found.reason


def test_redis_chunk_copied_to_another_tenant_is_rejected(redis_url: str, chunks: list[Any]) -> None:
    acme = RedisStore(redis_url, tenant="acme", secret=SECRET)
    globex = RedisStore(redis_url, tenant="globex", secret=SECRET)
    c = chunks[2]
    acme.put(c.key, c)
    # An attacker with write access copies acme's signed value under globex's key.
    globex.client.set(globex.redis_key(c.key), acme.client.get(acme.redis_key(c.key)))
    found = globex.lookup(c.key)
    assert found.chunk is None and "wrong tenant" in found.reason
    # ... or under another chunk's key in the same tenant.
    other = chunks[3]
    acme.client.set(acme.redis_key(other.key), acme.client.get(acme.redis_key(c.key)))
    found = acme.lookup(other.key)
    assert found.chunk is None and "wrong key" in found.reason


def test_redis_wrong_secret_is_rejected(redis_url: str, chunks: list[Any]) -> None:
    c = chunks[0]
    RedisStore(redis_url, tenant="acme", secret="an-attacker-secret-32-characters").put(c.key, c)
    found = RedisStore(redis_url, tenant="acme", secret=SECRET).lookup(c.key)
    assert found.chunk is None and "bad MAC" in found.reason
