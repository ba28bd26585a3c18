"""Let llmlingua 0.2.2 drive a transformers-5 model.

llmlingua slices ``past_key_values`` as a list of ``(key, value)`` tuples per layer (the legacy
format) and feeds such lists back; transformers 5 models take and return ``Cache`` objects
only, so llmlingua fails with "too many values to unpack" (microsoft/LLMLingua#210). This
wrapper converts at the model boundary, both ways; everything else is passed through.
"""

from __future__ import annotations

from typing import Any

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
            if past_key_values is not None and not hasattr(past_key_values, "get_seq_length"):
                past_key_values = from_legacy(past_key_values, self.inner.config)
            out = self.inner(*args, past_key_values=past_key_values, **kwargs)
            if getattr(out, "past_key_values", None) is not None:
                out.past_key_values = to_legacy(out.past_key_values)
            return out

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

    return _Legacy(model)
