"""How a request's chunks reach the fast engine's attention: the engine a placement builds.

* :class:`CopyPlacement` (the default): each request copies its chunks into the static buffer's
  context, keys re-rotated on the way (:class:`~ragcompress.kv.fast.FastGenerator`). Runs every
  family, every assembly mode and host-resident chunks.
* :class:`PagedPlacement`: chunks live in a paged pool on the GPU and each request reads them
  in place through a block table (:class:`~ragcompress.kv.fast.paged_engine.PagedFastGenerator`):
  placing a resident chunk costs a table row per block, not a copy. Dense global-attention
  families with one RoPE table, ``concat`` assembly.

:class:`~ragcompress.kv.fast.answer.FastKVAnswerer` takes one as ``placement``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.pool import ChunkPool

if TYPE_CHECKING:
    from ragcompress.kv.fast.engine import FastGenerator

__all__ = ["CopyPlacement", "PagedPlacement", "Placement"]


class Placement(ABC):
    """Builds the fast engine for a model; refuses an assembly mode it cannot serve."""

    @abstractmethod
    def engine(self, model: Any, **kwargs: Any) -> FastGenerator:
        """The engine over ``model``; ``kwargs`` are :class:`~ragcompress.kv.fast.FastGenerator`'s."""

    def check(self, assembly: Any) -> None:
        """Raise ``ValueError`` when requests assembled by ``assembly`` cannot be placed (by
        default every mode can)."""
        return None


@dataclass(frozen=True)
class CopyPlacement(Placement):
    """Chunks copied (and re-rotated) into each request's static buffer."""

    def engine(self, model: Any, **kwargs: Any) -> FastGenerator:
        from ragcompress.kv.fast.engine import FastGenerator

        return FastGenerator(model, **kwargs)


@dataclass(frozen=True)
class PagedPlacement(Placement):
    """Chunks read in place from a pool of ``pool_tokens`` slots (rounded up to whole blocks of
    ``block_size`` tokens; the kernel wants a power of two in [16, 128]) on the model's device.
    ``storage``: the pool's class, :class:`~ragcompress.kv.fast.pool.ChunkPool` (the model's
    dtype), :class:`~ragcompress.kv.fast.pool_int4.Int8ChunkPool` (int8) or
    :class:`~ragcompress.kv.fast.pool_int4.Int4ChunkPool` (int4, dequantized in the
    attention kernel: ~3.5x the chunks in the same memory)."""

    pool_tokens: int = 65536
    block_size: int = 64
    storage: type[ChunkPool] = ChunkPool

    def __post_init__(self) -> None:
        if self.pool_tokens <= 0 or self.block_size <= 0:
            raise ValueError(
                f"pool_tokens and block_size must be positive, got {self.pool_tokens} and {self.block_size}"
            )

    def engine(self, model: Any, **kwargs: Any) -> FastGenerator:
        from ragcompress.kv.fast.paged_engine import PagedFastGenerator

        pool = self.storage.for_model(model, self.pool_tokens, self.block_size)
        return PagedFastGenerator(model, pool=pool, **kwargs)

    def check(self, assembly: Any) -> None:
        name = getattr(assembly, "name", type(assembly).__name__)
        if name != "concat":
            raise ValueError(
                f"PagedPlacement places stored chunks as they are (concat); assembly {name!r} builds "
                "its own context: use CopyPlacement"
            )
