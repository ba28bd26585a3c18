"""Assembly modes (``concat``, ``ape``, ``blend``, ``blend_question``, ``blend_link``): registered
by name, built from a spec."""

from __future__ import annotations

from ragcompress.kv.assembly.ape import APE
from ragcompress.kv.assembly.base import (
    Assembly,
    Context,
    available_assemblies,
    build_assembly,
    register_assembly,
)
from ragcompress.kv.assembly.blend import Blend
from ragcompress.kv.assembly.blend_link import LinkBlend
from ragcompress.kv.assembly.blend_question import QuestionBlend
from ragcompress.kv.assembly.concat import Concat

__all__ = [
    "APE",
    "Assembly",
    "Blend",
    "Concat",
    "Context",
    "LinkBlend",
    "QuestionBlend",
    "available_assemblies",
    "build_assembly",
    "register_assembly",
]
