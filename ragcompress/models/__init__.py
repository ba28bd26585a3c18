"""Models: loading readers and embedders (aliases, GGUF conversion, the packaged defaults),
fetching the readers too large for one wheel, the model-family adapters (:mod:`.arch`), the
transformers cache-API shim (:mod:`.compat`) and the RoPE reference every kernel is tested
against (:mod:`.rope`)."""

from __future__ import annotations

from ragcompress.models.arch import supported_families
from ragcompress.models.compat import cache_kwargs, output_cache
from ragcompress.models.load import (
    DEFAULT_EMBEDDER,
    DEFAULT_READER,
    cache_home,
    default_device,
    load_embedder,
    load_reader,
    load_tokenizer,
    resolve_path,
)

__all__ = [
    "DEFAULT_EMBEDDER",
    "DEFAULT_READER",
    "cache_home",
    "cache_kwargs",
    "default_device",
    "load_embedder",
    "load_reader",
    "load_tokenizer",
    "output_cache",
    "resolve_path",
    "supported_families",
]
