"""Model-family adapters: the one place that knows a family's module names, norms, QKV bias,
QK-norm, RoPE variant and frequency tables, GQA grouping and block order.

Everything on the KV path (encoder, presses, assembly, kernels, engines) calls
:func:`arch_for` on the model and reads the returned :class:`ModelArch`; an unsupported family,
or a config its adapter cannot handle (e.g. YaRN RoPE), fails there with an error naming the
family and :func:`supported_families`.

To add a family: write ``models/arch/<family>.py`` with a function ``config -> ModelArch``
decorated ``@register_family("<config.model_type>")`` (see :mod:`~ragcompress.models.arch.llama`;
a family with per-layer-type RoPE gives each layer its table in ``ModelArch.rope``), import it
below, and add a tiny config to ``tests/support/tiny.py``'s ``TINY_FAMILIES`` so the family
tests run on it.
"""

from __future__ import annotations

from ragcompress.models.arch import gemma3 as _gemma3  # noqa: F401  (registers Gemma 3 text)
from ragcompress.models.arch import llama as _llama  # noqa: F401  (registers the Llama-shaped families)
from ragcompress.models.arch import qwen3 as _qwen3  # noqa: F401
from ragcompress.models.arch.base import (
    ROPE_TYPES,
    LayerParts,
    ModelArch,
    ModuleNames,
    RopeSpec,
    UnsupportedModelError,
)
from ragcompress.models.arch.registry import (
    arch_for,
    register_family,
    supported_families,
    supported_model_types,
)

__all__ = [
    "ROPE_TYPES",
    "LayerParts",
    "ModelArch",
    "ModuleNames",
    "RopeSpec",
    "UnsupportedModelError",
    "arch_for",
    "register_family",
    "supported_families",
    "supported_model_types",
]
