"""(1) Damaged or planted chunks, in unsigned and signed disk and Redis stores: a miss with a
reason, a re-encode, then a hit; never a wrong hit. (3) Weights changed in place or cast: every
chunk misses and is re-encoded with the new weights; an unchanged model still hits."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.faults.common import SECRET, Env, Tally, same_chunk
from tests.support.faults import Outcome

__all__ = ["planted_and_damaged", "weights_changed"]

Damage = Callable[[bytes, Any, Any], bytes]  # (stored bytes, chunk, another chunk) -> new bytes
RELABEL = "other passage's bytes, key relabeled"  # built from the other chunk's stored bytes


def _edit_field(name: str) -> Damage:
    """Change one character of header field ``name``'s value, lengths kept (the layout stays
    valid, only the meaning changes); works inside a signed envelope too."""

    def edit(data: bytes, _: Any, __: Any) -> bytes:
        found = re.search(rb'"' + re.escape(name.encode()) + rb'":"((?:[^"\\]|\\.)*)"', data)
        if found is None:
            raise LookupError(f"header field {name!r} not found")
        span = range(found.start(1), found.end(1))
        i = next((j for j in span if chr(data[j]).isalnum()), found.start(1))
        new = b"7" if data[i : i + 1] != b"7" else b"3"
        return data[:i] + new + data[i + 1 :]

    return edit


def _flip_tensor(data: bytes, _: Any, __: Any) -> bytes:
    raw = bytearray(data)
    raw[-9] ^= 0x10
    return bytes(raw)


def _truncate(data: bytes, _: Any, __: Any) -> bytes:
    return data[: len(data) // 2]


def _mislabeled(_: bytes, chunk: Any, other: Any) -> bytes:
    """A well-formed chunk (digests recomputed) of another passage's tokens and tensors, under
    this passage's key: what a writer bug or a planted file without a signature looks like."""
    from ragcompress.kv.serialize import chunk_to_bytes

    return chunk_to_bytes(dataclasses.replace(other, key=chunk.key))


def _forged_tensors(_: bytes, chunk: Any, __: Any) -> bytes:
    """This passage's key and token ids with other tensor values, digests recomputed, unsigned."""
    from ragcompress.kv.serialize import chunk_to_bytes

    layers = [dataclasses.replace(x, keys=x.keys + 1.0) for x in chunk.layers]
    return chunk_to_bytes(dataclasses.replace(chunk, layers=layers))


class _Backend:
    """Read and write a store's raw value for a key (disk file or Redis value)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def read(self, key: Any) -> bytes:
        from ragcompress.kv.store.disk import DiskStore

        if isinstance(self.store, DiskStore):
            return self.store.path(key).read_bytes()
        return bytes(self.store.client.get(self.store.redis_key(key)))

    def write(self, key: Any, data: bytes) -> None:
        from ragcompress.kv.store.disk import DiskStore

        if isinstance(self.store, DiskStore):
            path = self.store.path(key)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            path.write_bytes(data)
        else:
            self.store.client.set(self.store.redis_key(key), data)


def _stores(env: Env) -> dict[str, Callable[[], Any]]:
    from ragcompress.kv.store.disk import DiskStore
    from ragcompress.kv.store.redis import RedisStore

    url = env.redis.url
    return {
        "disk": lambda: DiskStore(env.fresh("disk")),
        "disk+key": lambda: DiskStore(env.fresh("disk"), secret=SECRET),
        "redis": lambda: RedisStore(url, tenant=env.tenant("plain"), secret=None),
        "redis+key": lambda: RedisStore(url, tenant=env.tenant("signed"), secret=SECRET),
    }


def _damages(signed: bool, fields: list[str]) -> dict[str, Damage | None]:
    out: dict[str, Damage | None] = {f"header {f}": _edit_field(f) for f in fields}
    out["tensor byte"] = _flip_tensor
    out["cut in half"] = _truncate
    out[RELABEL] = None
    out["token ids not the key's"] = _mislabeled
    if signed:  # an unkeyed store cannot tell a forger's consistent chunk from a real one
        out["forged tensors, unsigned"] = _forged_tensors
    return out


def _case(env: Env, make: Callable[[], Any], damage: Damage | None, p: str, q: str) -> str | None:
    from ragcompress.kv.cache import ChunkCache

    store = make()
    cache = ChunkCache(env.encoder, store)
    chunk, other = env.encoder.encode([p, q])
    store.put(chunk.key, chunk)
    raw = _Backend(store)
    if damage is None:
        store.put(other.key, other)
        stored = raw.read(other.key)
        if other.key.tokens.encode() not in stored:
            return "the key's token digest is not in the stored bytes"
        planted = stored.replace(other.key.tokens.encode(), chunk.key.tokens.encode())
    else:
        planted = damage(raw.read(chunk.key), chunk, other)
    raw.write(chunk.key, planted)
    got, stats = cache.get_or_encode([p])
    if not same_chunk(got[0], chunk):
        return f"WRONG HIT: served a chunk that is not the passage's (stats {stats.as_dict()})"
    if stats.encoded != 1:
        return f"damage not detected: hits={stats.hits}, encoded={stats.encoded}"
    reason = next(iter(stats.misses.values()), "")
    if reason in ("", "absent"):
        return f"miss without a reason: {reason!r}"
    again, stats = cache.get_or_encode([p])  # re-encoded and rewritten: a healthy hit now
    if stats.hits != 1 or not same_chunk(again[0], chunk):
        return f"not repaired: hits={stats.hits}, encoded={stats.encoded}, misses={stats.misses}"
    return None


def planted_and_damaged(env: Env) -> Outcome:
    from ragcompress.kv.serialize import chunk_to_bytes, read_header

    tally = Tally("(1) damaged or planted chunks: miss, re-encode")
    fields = sorted(read_header(chunk_to_bytes(env.encoder.encode(env.passages[:1])[0])))
    if env.quick:
        fields = ["length", "key.tokens"]
    reasons: dict[str, int] = {}
    for name, make in _stores(env).items():
        for i, (what, damage) in enumerate(_damages(name.endswith("+key"), fields).items()):
            if env.quick and i % 3:
                continue
            p = env.passages[i % len(env.passages)] + f" ({name}: {what})"
            q = env.passages[(i + 3) % len(env.passages)] + f" ({name}: other)"
            held = tally.run(f"{name} / {what}", partial(_case, env, make, damage, p, q))
            reasons[name] = reasons.get(name, 0) + int(held)
    return tally.done(header_fields=len(fields), held_per_store=reasons)


# -- (3) weights changed in place -----------------------------------------------------------
def _bump(model: Any) -> None:
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight[1, 3] += 1e-3  # one element: no sample would see it


def _norm(model: Any) -> None:
    import torch

    with torch.no_grad():
        model.model.norm.weight.mul_(1.01)


def _adapter(model: Any) -> None:
    """Load other weights into the same tensors (what loading a fine-tuned state dict does)."""
    from tests.support.tiny import make_tiny_llama

    model.load_state_dict(make_tiny_llama(model.config.vocab_size, seed=7).state_dict())


def _data_swap(model: Any) -> None:
    import torch

    layer = model.model.layers[0].mlp.up_proj
    layer.weight.data = layer.weight.data + torch.full_like(layer.weight.data, 1e-3)


CHANGES: dict[str, Callable[[Any], None]] = {
    "one element += 1e-3": _bump,
    "final norm *= 1.01": _norm,
    "load_state_dict (adapter)": _adapter,
    ".data replaced": _data_swap,
    "cast to float64": lambda m: m.to(dtype=__import__("torch").float64),
    "cast to bfloat16": lambda m: m.to(dtype=__import__("torch").bfloat16),
}


def _weights_case(env: Env, change: Callable[[Any], None] | None) -> str | None:
    from ragcompress.generate import Generator
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.store.memory import MemoryStore
    from tests.support.tiny import make_tiny_llama

    model = make_tiny_llama(len(env.tok), seed=3)
    kv = KVAnswerer.from_generator(
        Generator.from_model(model, env.tok, max_new_tokens=4), store=MemoryStore(1 << 28)
    )
    question, passages = "What is this about?", env.passages[:3]
    kv.answer(question, passages)
    if change is not None:
        change(model)
    got = kv.answer(question, passages)
    hits = got.stats.extra["chunks_hit"]
    if change is None:
        return None if hits == len(passages) else f"an unchanged model missed: hits={hits}"
    if hits:
        return f"STALE HIT: {hits} chunk(s) of the old weights served"
    fresh = KVAnswerer.from_generator(
        Generator.from_model(model, env.tok, max_new_tokens=4), store=MemoryStore(1 << 28)
    )
    want = fresh.answer(question, passages)
    if got.token_ids != want.token_ids:
        return f"answer differs from a fresh cache's: {got.token_ids} vs {want.token_ids}"
    return None


def weights_changed(env: Env) -> Outcome:
    tally = Tally("(3) weights changed in place or cast: miss")
    tally.run("unchanged model (after a forward) still hits", lambda: _weights_case(env, None))
    for i, (name, change) in enumerate(CHANGES.items()):
        if env.quick and i not in (0, 4):
            continue
        tally.run(name, partial(_weights_case, env, change))
    return tally.done()
