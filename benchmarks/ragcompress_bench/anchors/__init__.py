"""Third-party compressors run side by side with ours: LangChain's ``EmbeddingsFilter`` and
``llmlingua``'s ``PromptCompressor``. The glue that makes them run here (a LangChain wrapper of
our embedder, a legacy-KV-cache adapter, the offline tiktoken file) is benchmark code, kept out
of the library on purpose.
"""

from __future__ import annotations

from ragcompress_bench.anchors.embeddings_filter import EmbeddingsFilterPassages, EmbeddingsFilterSentences
from ragcompress_bench.anchors.llmlingua_anchor import LLMLinguaAnchor, LongLLMLinguaAnchor

__all__ = ["EmbeddingsFilterPassages", "EmbeddingsFilterSentences", "LLMLinguaAnchor", "LongLLMLinguaAnchor"]
