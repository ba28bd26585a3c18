"""The RAG pipeline: retrieval → text compressors → generator, or → cached KV chunks → generator."""

from __future__ import annotations

from ragcompress.pipeline.core import (
    KVSpec,
    Pipeline,
    PipelineError,
    PipelineResult,
    find_pipeline,
    pipeline_names,
)

__all__ = ["KVSpec", "Pipeline", "PipelineError", "PipelineResult", "find_pipeline", "pipeline_names"]
