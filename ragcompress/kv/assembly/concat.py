"""``concat``: the chunks one after the other after the shared prefix, keys re-rotated to their new
positions; no chunk sees another (each was encoded alone), nothing is recomputed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assembly.base import Assembly, Context, register_assembly

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.chunk import KVChunk

__all__ = ["Concat"]


@register_assembly("concat")
@dataclass
class Concat(Assembly):
    """Sequential positions; the question starts after the last chunk's original end."""

    def prepare(
        self, model: PreTrainedModel, prefix: PrefixKV, chunks: Sequence[KVChunk], question: Sequence[int]
    ) -> Context:
        from ragcompress.kv.assemble import assemble, concat_starts
        from ragcompress.kv.assembly.window import local_window
        from ragcompress.models.arch import arch_for

        arch = arch_for(model)
        starts = concat_starts(prefix.length, chunks)
        cache, position = assemble(prefix, chunks, arch, model.config, starts=starts)
        local = local_window(arch, prefix.length, chunks, starts, prefix.keys[0].device)
        return Context(cache, position, slots=cache.get_seq_length(), **local)

    def load_fast(
        self,
        engine: Any,
        packed_prefix: Any,
        model: PreTrainedModel,
        prefix: PrefixKV,
        chunks: Sequence[KVChunk],
        question: Sequence[int],
    ) -> tuple[int, float]:
        # The engine writes (and re-rotates) chunks itself, skipping those the last request left.
        return engine.load_reusing(packed_prefix, chunks), 0.0
