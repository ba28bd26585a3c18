"""Fixtures for the shared-store tests: a real ``redis-server`` on loopback (a free port, started
once per session, stopped at the end), the tiny model's encoder and a few encoded chunks."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

PASSAGES = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Danube flows through ten countries before reaching the Black Sea.",
    "Ada Lovelace wrote what is often called the first computer program.",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `-m redis` / `-m "not redis"` select the tests that need the server.
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    if shutil.which("redis-server") is None:
        pytest.skip("the redis-server binary is not on PATH (Debian: apt-get install redis-server)")
    from tests.support.redis_local import LocalRedis

    server = LocalRedis().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session server's URL, running and empty."""
    import redis

    redis_server.start()  # a test may have stopped it
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return str(redis_server.url)


@pytest.fixture(scope="session")
def encoder(tokenizer: Any, tiny_llama: Any) -> Any:
    from ragcompress.kv.encode.encoder import ChunkEncoder

    return ChunkEncoder(tiny_llama, tokenizer)


@pytest.fixture(scope="session")
def chunks(encoder: Any) -> list[Any]:
    return list(encoder.encode(PASSAGES))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Any, tokenizer: Any) -> str:
    """The tiny model saved like a user's checkpoint, so worker processes can load it by path."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def passages() -> list[str]:
    return list(PASSAGES)


@pytest.fixture(scope="session")
def same() -> Any:
    """``same(a, b)``: chunks with bit-identical tensors and equal metadata."""
    return same_chunk


def same_chunk(a: Any, b: Any) -> bool:
    """Bit-identical tensors (dtype, shape, bytes) and equal metadata."""
    import torch

    if (a.key, a.model, a.base_offset, a.length) != (b.key, b.model, b.base_offset, b.length):
        return False
    if not torch.equal(a.token_ids.cpu(), b.token_ids.cpu()) or len(a.layers) != len(b.layers):
        return False
    for la, lb in zip(a.layers, b.layers, strict=True):
        if type(la) is not type(lb) or la.meta() != lb.meta():
            return False
        ta, tb = la.tensors(), lb.tensors()
        if ta.keys() != tb.keys():
            return False
        for name in ta:
            x, y = ta[name].cpu(), tb[name].cpu()
            if x.dtype != y.dtype or x.shape != y.shape:
                return False
            if not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                return False
    return True
