"""LlamaIndex node postprocessor that runs a ragcompress text compressor.

Each ``NodeWithScore`` becomes one ``ragcompress.Passage``; each kept passage maps back to its
own node: same node id, same score, same metadata plus what the compressor did under
``metadata["ragcompress"]`` (hidden from the LLM and the embedder), text replaced. Nodes are
never joined into one string and split again, so per-node scores and metadata survive.
"""

from __future__ import annotations

from typing import Annotated, Any

from llama_index.core.bridge.pydantic import BeforeValidator, ConfigDict, Field, field_serializer
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from ragcompress import Budget, CompressionStats, Passage
from ragcompress.adapters import Kept, checked_budget, compress_items, text_compressor, to_passages
from ragcompress.types import STATS_KEY

__all__ = ["STATS_KEY", "RagCompressNodePostprocessor"]


def _budget(value: Any) -> Any:
    """``value`` checked by ``Budget.coerce``; a dict (``Budget.spec()``, as ``to_dict`` writes
    it) becomes the ``Budget`` it describes."""
    if isinstance(value, dict):
        try:
            value = Budget(**value)
        except TypeError as err:
            raise ValueError(f"budget as a dict takes 'ratio' or 'tokens', got {sorted(value)}") from err
    return checked_budget(value)


class RagCompressNodePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes with a ragcompress compressor, keeping their identity.

    ``compressor`` is a ragcompress compressor object, or a spec (dict, JSON string, name, or
    list of specs for a chain) that ``ragcompress.build`` turns into one. ``budget`` overrides
    the compressor's own ratio: a float in (0, 1] keeps that share of tokens, an int > 1 is a
    token target, a ``ragcompress.Budget`` is used as is. Nodes without text (e.g. image-only
    nodes) pass through untouched: a text compressor has nothing to say about them.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    compressor: Annotated[Any, BeforeValidator(text_compressor)] = Field(
        description="A ragcompress text compressor, or its spec."
    )
    budget: Annotated[Budget | float | int | None, BeforeValidator(_budget)] = Field(
        default=None, description="Overrides the compressor's ratio: a ratio, a token target or a Budget."
    )

    # to_dict/to_json write the compressor's spec and the budget's, which the validators above
    # turn back into equal objects: from_dict(to_dict()) round-trips without pickle.
    @field_serializer("compressor")
    def _compressor_spec(self, compressor: Any) -> Any:
        return compressor.spec()

    @field_serializer("budget")
    def _budget_spec(self, budget: Budget | float | int | None) -> Any:
        return budget.spec() if isinstance(budget, Budget) else budget

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
        slots = to_passages(nodes, _passage)
        kept, stats = compress_items(self.compressor, slots, query, self.budget)
        out: list[NodeWithScore] = []
        for nws, slot, k in zip(nodes, slots, kept, strict=True):
            if slot is None:  # no text: passed through as is
                out.append(nws)
            elif k is not None:
                out.append(NodeWithScore(node=_rebuild(nws.node, k), score=nws.score))
        return out, stats


def _to_passages(nodes: list[NodeWithScore]) -> list[Passage]:
    """Passages of the nodes that have text, in node order, with unique ids."""
    return [p for p in to_passages(nodes, _passage) if p is not None]


def _passage(i: int, nws: NodeWithScore) -> Passage | None:
    """The node's passage (its text without metadata), or None for a node without text."""
    if not isinstance(nws, NodeWithScore) or not isinstance(nws.node, BaseNode):
        raise TypeError(f"node #{i} must be a llama_index NodeWithScore, got {type(nws).__name__}")
    text = nws.node.get_content(metadata_mode=MetadataMode.NONE)
    if not isinstance(text, str) or not text.strip():
        return None
    return Passage(text=text, id=nws.node.node_id, score=nws.score, metadata=nws.node.metadata)


def _rebuild(node: BaseNode, kept: Kept) -> BaseNode:
    # Our statistics are for people and logs, not for the LLM prompt or the embedding.
    new = node.model_copy(
        update={
            "metadata": kept.metadata,
            "excluded_llm_metadata_keys": _with(node.excluded_llm_metadata_keys, STATS_KEY),
            "excluded_embed_metadata_keys": _with(node.excluded_embed_metadata_keys, STATS_KEY),
        }
    )
    new.set_content(kept.passage.text)
    return new


def _with(keys: list[str], key: str) -> list[str]:
    return list(keys) if key in keys else [*keys, key]
