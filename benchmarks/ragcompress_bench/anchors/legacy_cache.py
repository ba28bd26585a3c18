"""Let llmlingua 0.2.2 drive a transformers-5 model.

llmlingua slices ``past_key_values`` as a list of ``(key, value)`` tuples per layer (the legacy
format) and feeds such lists back; transformers 5 models take and return ``Cache`` objects
only, so llmlingua fails with "too many values to unpack" (microsoft/LLMLingua#210). This
wrapper converts at the model boundary, both ways; everything else is passed through.

It is the one place outside :mod:`ragcompress.models.compat` that names ``past_key_values`` on
purpose: that is the keyword llmlingua calls the wrapper with and the output attribute it reads.
Toward the wrapped model it speaks whatever the installed transformers takes (``cache_kwargs``).
"""

from __future__ import annotations

from typing import Any

from ragcompress.models.compat import cache_kwargs, output_cache

__all__ = ["LegacyCacheModel", "from_legacy", "to_legacy"]


def to_legacy(cache: Any) -> list[tuple[Any, Any]]:
    """A ``Cache`` as a list of per-layer ``(keys, values)``, each (batch, kv_heads, seq, head_dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def from_legacy(legacy: Any, config: Any) -> Any:
    """A ``DynamicCache`` holding the given per-layer ``(keys, values)`` tensors."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k, v) for k, v in legacy], config=config)


def LegacyCacheModel(model: Any) -> Any:
    """Wrap ``model`` so that its forward takes and returns legacy tuple caches."""
    import torch

    class _Legacy(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
            # ``past_key_values``: llmlingua's keyword (it calls the model the pre-5 way), kept on purpose
            cache = past_key_values
            if cache is not None and not hasattr(cache, "get_seq_length"):
                cache = from_legacy(cache, self.inner.config)
            out = self.inner(*args, **cache_kwargs(self.inner, cache), **kwargs)
            returned = output_cache(out)
            if returned is not None:
                # llmlingua reads ``out.past_key_values``: on transformers >= 5.24 an alias of ``out.cache``
                out["cache" if "cache" in out else "past_key_values"] = to_legacy(returned)
            return out

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

    return _Legacy(model)
