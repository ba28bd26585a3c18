"""Which tiers a chunk store has and how big each is: the settings users write (YAML
``kv.store``, CLI flags, Python), built into one :class:`~ragcompress.kv.store.tiered.TieredStore`.

A single store named by URL (``redis://…``, ``file:///…`` or a directory, ``memory://``) in
those settings stands for the same tiers as the mapping that names it (:meth:`StoreSpec.from_url`):
a memory tier of the same default budget in front of the disk or Redis store. Without the
memory tier: a spec with ``gpu_bytes=None`` (the one tier, behind its circuit breaker), or the
bare store of :func:`~ragcompress.kv.store.open.open_store` (whose errors raise).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.store.errors import redact_url
from ragcompress.kv.store.open import (
    DEFAULT_MEMORY_BYTES,
    check_name,
    check_query,
    file_path,
    memory_bytes,
    redis_query_names,
    schemes,
)

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.store.breaker import CircuitBreaker
    from ragcompress.kv.store.tiered import TieredStore

__all__ = ["StoreSpec"]


@dataclass(frozen=True)
class StoreSpec:
    """The tiers of a chunk store, fastest first; a tier whose setting is None is left out.

    ``gpu_bytes``: LRU byte budget of the memory tier on the model's device (the GPU; the CPU
    for a model that runs there). ``host_bytes``: LRU byte budget of a host-memory tier (pinned
    when CUDA is present; on a CPU-only machine it duplicates the first tier, leave it None).
    ``disk_dir``: a directory of chunk files; ``disk_bytes`` caps it (None: unbounded).
    ``redis_url``: a shared Redis tier (``redis://`` or ``rediss://``), ``tenant`` its tenant.
    ``secret``: HMAC key for the shared tiers (disk and Redis); None: ``$RAGCOMPRESS_STORE_SECRET``
    when set, else unsigned. Never printed in ``repr`` nor returned by :meth:`to_dict`.
    """

    gpu_bytes: int | None = DEFAULT_MEMORY_BYTES
    host_bytes: int | None = None
    disk_dir: str | os.PathLike[str] | None = None  # stored as a str
    disk_bytes: int | None = None
    redis_url: str | None = None
    tenant: str | None = None
    secret: bytes | str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("gpu_bytes", "host_bytes", "disk_bytes"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value <= 0):
                raise ValueError(
                    f"StoreSpec.{name} must be a positive integer (bytes) or None, got {value!r}"
                )
        if self.disk_dir is not None:
            if not isinstance(self.disk_dir, str | os.PathLike) or not os.fspath(self.disk_dir):
                raise ValueError(
                    f"StoreSpec.disk_dir must be a directory path or None, got {self.disk_dir!r}"
                )
            object.__setattr__(self, "disk_dir", os.fspath(self.disk_dir))
        elif self.disk_bytes is not None:
            raise ValueError("StoreSpec.disk_bytes caps the disk tier: set disk_dir too, or drop disk_bytes")
        self._check_redis()
        if self.secret is not None and (not isinstance(self.secret, str | bytes) or not self.secret):
            raise ValueError("StoreSpec.secret must be a non-empty str or bytes, or None")
        if not self.tier_names():
            raise ValueError(
                "StoreSpec has no tier: set at least one of gpu_bytes, host_bytes, disk_dir, redis_url"
            )

    def __repr__(self) -> str:
        # The URL's password (and the secret) must never reach a log line.
        shown = {
            **self.to_dict(),
            "redis_url": None if self.redis_url is None else redact_url(self.redis_url),
        }
        return f"StoreSpec({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def _check_redis(self) -> None:
        url = self.redis_url
        if url is not None and (
            not isinstance(url, str) or url.split("://", 1)[0].lower() not in ("redis", "rediss")
        ):
            shown = redact_url(url) if isinstance(url, str) else repr(url)
            raise ValueError(f"StoreSpec.redis_url must be a redis:// or rediss:// URL, got {shown!r}")
        if url is not None:
            try:
                check_query(url, redis_query_names(url))
            except ValueError as err:
                raise ValueError(f"StoreSpec.redis_url: {err}") from None
        if self.tenant is not None:
            if url is None:
                raise ValueError(
                    "StoreSpec.tenant applies to the Redis tier: set redis_url too, or drop tenant"
                )
            check_name("StoreSpec.tenant", self.tenant)

    def tier_names(self) -> list[str]:
        """The tiers :meth:`build` makes, fastest first (a subset of gpu, host, disk, redis)."""
        settings = (self.gpu_bytes, self.host_bytes, self.disk_dir, self.redis_url)
        return [n for n, s in zip(("gpu", "host", "disk", "redis"), settings, strict=True) if s is not None]

    def build(self, device: torch.device | str = "cpu", breaker: CircuitBreaker | None = None) -> TieredStore:
        """The store: the ``gpu`` tier on ``device`` (the model's), then ``host``, ``disk`` and
        ``redis`` as set, each behind a copy of ``breaker`` (default settings when None). Disk
        and Redis chunks load onto the CPU; a hit is promoted into the memory tiers."""
        from ragcompress.kv.store.base import ChunkStore
        from ragcompress.kv.store.disk import DiskStore
        from ragcompress.kv.store.memory import MemoryStore
        from ragcompress.kv.store.open import open_store
        from ragcompress.kv.store.tiered import TieredStore

        tiers: list[tuple[str, ChunkStore]] = []
        if self.gpu_bytes is not None:
            tiers.append(("gpu", MemoryStore(self.gpu_bytes, device=device)))
        if self.host_bytes is not None:
            tiers.append(("host", MemoryStore(self.host_bytes, device="cpu")))
        if self.disk_dir is not None:
            tiers.append(("disk", DiskStore(self.disk_dir, secret=self.secret, max_bytes=self.disk_bytes)))
        if self.redis_url is not None:
            tiers.append(("redis", open_store(self.redis_url, tenant=self.tenant, secret=self.secret)))
        return TieredStore(tiers, breaker)

    @classmethod
    def from_url(cls, url: str, *, gpu_bytes: int | None = DEFAULT_MEMORY_BYTES) -> StoreSpec:
        """The tiers a single store URL stands for: a memory tier of ``gpu_bytes`` (None: none)
        in front of the shared store the URL names, as the mapping ``{redis_url: url}`` or
        ``{disk_dir: path}`` has. ``redis://…`` and ``rediss://…`` (tenant and options in the
        query) are the Redis tier, ``file:///dir`` or a plain directory the disk tier;
        ``memory://`` (``?max_bytes=N``, default ``gpu_bytes``) is the memory tier itself.
        A scheme added with ``register_scheme`` has no tier here: open it with ``open_store``."""
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"a store URL is a non-empty string, got {url!r}")
        url = url.strip()
        scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
        if url[:5].lower() == "file:" or scheme == "file":
            return cls(gpu_bytes=gpu_bytes, disk_dir=file_path(url))
        if scheme in ("redis", "rediss"):
            check_query(url, redis_query_names(url))  # the URL's own error, before the field's
            return cls(gpu_bytes=gpu_bytes, redis_url=url)
        if scheme == "memory":
            return cls(gpu_bytes=memory_bytes(url, gpu_bytes or DEFAULT_MEMORY_BYTES))
        known = ", ".join(f"{s}://" for s in schemes())
        raise ValueError(
            f"store URL scheme {scheme!r} of {redact_url(url)!r} is not a tier of a tiered store "
            f"(memory://, file:///dir or a directory, redis://, rediss://; open_store knows {known}): "
            "build that store with open_store and pass it as the store"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreSpec:
        """A spec from a mapping (a YAML section); an unknown key is an error naming it."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a store spec is a mapping of its fields, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise ValueError(f"unknown store setting(s) {', '.join(unknown)}; known: {', '.join(names)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The settings as :meth:`from_dict` takes them, without ``secret``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "secret"}
