"""The RAG pipeline: retrieval → text compressors → generator, or → cached KV chunks → generator.

:mod:`ragcompress.pipeline.spec` holds the one validated spec (YAML, CLI flags and Python build the
same :class:`PipelineSpec`); :mod:`ragcompress.pipeline.core` builds and runs the pipeline.
"""

from __future__ import annotations

from ragcompress.pipeline.core import (
    Pipeline,
    PipelineResult,
    find_pipeline,
    pipeline_names,
)
from ragcompress.pipeline.spec import (
    GeneratorSpec,
    KVSpec,
    PipelineError,
    PipelineSpec,
    RetrieverSpec,
    load_spec,
    overlay,
)

__all__ = [
    "GeneratorSpec",
    "KVSpec",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "PipelineSpec",
    "RetrieverSpec",
    "find_pipeline",
    "load_spec",
    "overlay",
    "pipeline_names",
]
