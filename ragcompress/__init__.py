"""ragcompress: context compression for retrieval-augmented generation.

Importing the package is cheap: torch, transformers and the models load only when a
compressor, encoder or generator is first used.
"""

from __future__ import annotations

from ragcompress.registry import SpecError, available, build, register, spec_of
from ragcompress.sampling import Sampling
from ragcompress.types import Budget, CompressionStats, Passage

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "CompressionStats",
    "Passage",
    "Sampling",
    "SpecError",
    "__version__",
    "available",
    "build",
    "register",
    "spec_of",
]
