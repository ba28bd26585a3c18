"""LlamaIndex node postprocessor that runs a ragcompress text compressor.

Each ``NodeWithScore`` becomes one ``ragcompress.Passage``; each kept passage maps back to its
own node: same node id, same score, same metadata plus what the compressor did under
``metadata["ragcompress"]`` (hidden from the LLM and the embedder), text replaced. Nodes are
never joined into one string and split again, so per-node scores and metadata survive.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from ragcompress import Budget, CompressionStats, Passage, build
from ragcompress.types import STATS_KEY

__all__ = ["STATS_KEY", "RagCompressNodePostprocessor"]


class RagCompressNodePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes with a ragcompress compressor, keeping their identity.

    ``compressor`` is a ragcompress compressor object, or a spec (dict, JSON string, name, or
    list of specs for a chain) that ``ragcompress.build`` turns into one. ``budget`` overrides
    the compressor's own ratio: a float in (0, 1] keeps that share of tokens, an int > 1 is a
    token target, a ``ragcompress.Budget`` is used as is. Nodes without text (e.g. image-only
    nodes) pass through untouched: a text compressor has nothing to say about them.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    compressor: Any = Field(description="A ragcompress text compressor, or its spec.")
    budget: Budget | float | int | None = Field(
        default=None, description="Overrides the compressor's ratio: a ratio, a token target or a Budget."
    )

    @field_validator("compressor", mode="before")
    @classmethod
    def _build_compressor(cls, value: Any) -> Any:
        if isinstance(value, dict | str | list | tuple):
            value = build(value)
        if not callable(getattr(value, "compress_with_stats", None)):
            raise TypeError(
                "compressor must be a ragcompress text compressor (with compress_with_stats) or a spec "
                f"that ragcompress.build accepts, got {type(value).__name__}"
            )
        return value

    @field_validator("budget", mode="before")
    @classmethod
    def _check_budget(cls, value: Any) -> Any:
        Budget.coerce(value)  # fail at construction, with ragcompress's own message
        return value

    @classmethod
    def class_name(cls) -> str:
        return "RagCompressNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return self.postprocess_nodes_with_stats(nodes, query_bundle)[0]

    def postprocess_nodes_with_stats(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | str | None = None
    ) -> tuple[list[NodeWithScore], CompressionStats]:
        """Like ``postprocess_nodes``, also returning the statistics of the whole call."""
        query = query_bundle.query_str if isinstance(query_bundle, QueryBundle) else query_bundle or ""
        passages, slots = _to_passages(nodes)
        result = self.compressor.compress_with_stats(passages, query, self.budget)
        stats: CompressionStats = result.stats
        by_id: dict[str, Passage] = {}
        position = {p.id: i for i, p in enumerate(passages)}
        for p in result.passages:
            if p.id not in position or p.id in by_id:
                problem = "twice" if p.id in by_id else "but it was not an input"
                raise ValueError(f"compressor {stats.compressor!r} returned passage {p.id!r} {problem}")
            by_id[p.id] = p
        batch = {k: v for k, v in stats.as_dict().items() if k != "dropped"}
        counts = _token_counts(
            self.compressor,
            [passages[position[pid]].text for pid in by_id],
            [p.text for p in by_id.values()],
        )
        tokens = dict(zip(by_id, counts, strict=True))
        out: list[NodeWithScore] = []
        for node, pid in zip(nodes, slots, strict=True):
            if pid is None:  # no text: passed through as is
                out.append(node)
            elif pid in by_id:
                before, after = tokens[pid]
                new = _rebuild(node.node, by_id[pid], stats.compressor, before, after, batch)
                out.append(NodeWithScore(node=new, score=node.score))
        return out, stats


def _to_passages(nodes: list[NodeWithScore]) -> tuple[list[Passage], list[str | None]]:
    """Passages of the nodes that have text, and for each node its passage id (None: no text)."""
    passages: list[Passage] = []
    slots: list[str | None] = []
    used: set[str] = set()
    for i, nws in enumerate(nodes):
        if not isinstance(nws, NodeWithScore) or not isinstance(nws.node, BaseNode):
            raise TypeError(f"node #{i} must be a llama_index NodeWithScore, got {type(nws).__name__}")
        text = nws.node.get_content(metadata_mode=MetadataMode.NONE)
        if not isinstance(text, str) or not text.strip():
            slots.append(None)
            continue
        # The same node can come back twice (e.g. from a fusion retriever); each copy is its
        # own input with its own output, so the passage ids must differ.
        base = nws.node.node_id
        pid, k = base, 1
        while pid in used:
            pid, k = f"{base}#{k}", k + 1
        used.add(pid)
        passages.append(Passage(text=text, id=pid, score=nws.score, metadata=nws.node.metadata))
        slots.append(pid)
    return passages, slots


def _token_counts(compressor: Any, before: list[str], after: list[str]) -> list[tuple[int, int]]:
    """(tokens before, tokens after) of each kept node, with the compressor's tokenizer."""
    if not after:
        return []
    from ragcompress.text.base import TokenCounter

    counts = TokenCounter(getattr(compressor, "tokenizer", None)).many(before + after)
    return list(zip(counts[: len(before)], counts[len(before) :], strict=True))


def _rebuild(
    node: BaseNode, passage: Passage, compressor: str, before: int, after: int, batch: dict[str, Any]
) -> BaseNode:
    meta = dict(node.metadata)
    stats: dict[str, Any] = dict(meta.get(STATS_KEY, {}))
    stats.update(passage.metadata.get(STATS_KEY, {}))
    stats.update(compressor=compressor, tokens_before=before, tokens_after=after, batch=batch)
    meta[STATS_KEY] = stats
    # Our statistics are for people and logs, not for the LLM prompt or the embedding.
    new = node.model_copy(
        update={
            "metadata": meta,
            "excluded_llm_metadata_keys": _with(node.excluded_llm_metadata_keys, STATS_KEY),
            "excluded_embed_metadata_keys": _with(node.excluded_embed_metadata_keys, STATS_KEY),
        }
    )
    new.set_content(passage.text)
    return new


def _with(keys: list[str], key: str) -> list[str]:
    return list(keys) if key in keys else [*keys, key]
