"""RagCompressNodePostprocessor with real LlamaIndex objects: TextNode, NodeWithScore,
QueryBundle, a VectorStoreIndex over the packaged MiniLM and a query engine."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.ragcompress import STATS_KEY, RagCompressNodePostprocessor

import ragcompress
from ragcompress import Budget
from ragcompress.text.base import TokenCounter

SPEC = {"name": "sentences", "ratio": 0.5}
QUERY = "How many moons does Jupiter have?"

# Multi-sentence passages so that sentence selection has something to drop in each.
CORPUS = [
    (
        "mitochondria",
        "biology",
        "Mitochondria are organelles found in most eukaryotic cells. They produce most of the cell's "
        "supply of ATP. Mitochondria have their own small circular DNA. They are thought to descend from "
        "ancient bacteria. Red blood cells of mammals have no mitochondria.",
    ),
    (
        "photosynthesis",
        "biology",
        "Photosynthesis turns light energy into chemical energy. It takes place in the chloroplasts of "
        "plant cells. Carbon dioxide and water are converted into glucose and oxygen. Chlorophyll absorbs "
        "mostly blue and red light. That is why leaves look green.",
    ),
    (
        "jupiter",
        "astronomy",
        "Jupiter is the largest planet in the Solar System. It is a gas giant made mostly of hydrogen and "
        "helium. Its Great Red Spot is a storm larger than Earth. Jupiter has at least 95 known moons. "
        "Galileo discovered its four largest moons in 1610.",
    ),
    (
        "mars",
        "astronomy",
        "Mars is the fourth planet from the Sun. Its red colour comes from iron oxide on its surface. "
        "Olympus Mons on Mars is the tallest volcano in the Solar System. Mars has two small moons, Phobos "
        "and Deimos. Several rovers have explored its surface.",
    ),
    (
        "printing",
        "history",
        "Johannes Gutenberg introduced movable-type printing to Europe around 1440. His press made books "
        "far cheaper to produce. The Gutenberg Bible was printed in the 1450s. Printing spread to over two "
        "hundred cities within fifty years. It helped the spread of the Reformation.",
    ),
]


def make_nodes() -> list[TextNode]:
    return [
        TextNode(id_=node_id, text=text, metadata={"topic": topic, "source": f"{node_id}.txt"})
        for node_id, topic, text in CORPUS
    ]


@pytest.fixture(scope="module")
def index(embed_model: BaseEmbedding) -> VectorStoreIndex:
    return VectorStoreIndex(make_nodes(), embed_model=embed_model)


def scored_nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=n, score=0.9 - 0.1 * i) for i, n in enumerate(make_nodes())]


def _check_identity(inputs: list[NodeWithScore], outputs: list[NodeWithScore]) -> None:
    """At most one output per input, in input order; same id, score and metadata; shorter text."""
    index = {n.node.node_id: i for i, n in enumerate(inputs)}
    ids = [n.node.node_id for n in outputs]
    assert len(ids) == len(set(ids))
    assert [index[i] for i in ids] == sorted(index[i] for i in ids)
    for out in outputs:
        src = inputs[index[out.node.node_id]]
        assert out.score == src.score
        assert type(out.node) is type(src.node)
        assert {k: v for k, v in out.node.metadata.items() if k != STATS_KEY} == src.node.metadata
        stats = out.node.metadata[STATS_KEY]
        assert set(stats) >= {"compressor", "tokens_before", "tokens_after", "batch"}
        assert stats["tokens_after"] <= stats["tokens_before"]
        assert out.node.get_content().strip()
        assert len(out.node.get_content()) <= len(src.node.get_content())
        # The stats are for people and logs, not for the LLM prompt or the embedding.
        assert STATS_KEY not in out.node.get_content(metadata_mode=MetadataMode.LLM)
        assert STATS_KEY not in out.node.get_content(metadata_mode=MetadataMode.EMBED)


def test_identity_scores_and_stats_survive() -> None:
    nodes = scored_nodes()
    texts = [n.node.get_content() for n in nodes]
    post = RagCompressNodePostprocessor(compressor=ragcompress.build(SPEC))
    out = post.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert out
    _check_identity(nodes, out)
    assert out[[n.node.node_id for n in out].index("jupiter")].node.get_content().count("95") == 1
    assert sum(len(n.node.get_content()) for n in out) < sum(map(len, texts))
    # The inputs are left alone.
    assert [n.node.get_content() for n in nodes] == texts
    assert all(STATS_KEY not in n.node.metadata for n in nodes)


def test_budget_held_and_fully_dropped_nodes_removed() -> None:
    nodes = scored_nodes()
    budget = Budget(tokens=40)
    post = RagCompressNodePostprocessor(compressor=SPEC, budget=budget)
    out, stats = post.postprocess_nodes_with_stats(nodes, QUERY)
    count = TokenCounter()
    assert sum(count(n.node.get_content()) for n in out) <= 40
    assert stats.tokens_before == sum(count(n.node.get_content()) for n in nodes)
    assert len(out) < len(nodes), "a 40-token budget cannot keep a sentence of each of 5 nodes"
    assert {n.node.node_id for n in out} | set(stats.dropped) == {n.node.node_id for n in nodes}
    _check_identity(nodes, out)


def test_ratio_one_keeps_every_node_whole() -> None:
    nodes = scored_nodes()
    out = RagCompressNodePostprocessor(compressor={**SPEC, "ratio": 1.0}).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert [(n.node.node_id, n.score, n.node.get_content()) for n in out] == [
        (n.node.node_id, n.score, n.node.get_content()) for n in nodes
    ]


def test_empty_list_gives_empty_list() -> None:
    assert RagCompressNodePostprocessor(compressor=SPEC).postprocess_nodes([], query_str=QUERY) == []


@pytest.mark.parametrize("form", ["dict", "json", "object"])
def test_compressor_given_as_spec_or_object(form: str) -> None:
    given = {"dict": SPEC, "json": json.dumps(SPEC), "object": ragcompress.build(SPEC)}[form]
    post = RagCompressNodePostprocessor(compressor=given)
    assert post.compressor.spec() == ragcompress.build(SPEC).spec()
    reference = RagCompressNodePostprocessor(compressor=ragcompress.build(SPEC))
    assert [
        (n.node.node_id, n.node.get_content()) for n in post.postprocess_nodes(scored_nodes(), None, QUERY)
    ] == [
        (n.node.node_id, n.node.get_content())
        for n in reference.postprocess_nodes(scored_nodes(), None, QUERY)
    ]


@pytest.mark.parametrize(
    ("compressor", "budget"),
    [(SPEC, None), (SPEC, 0.3), ([{"name": "redundancy"}, SPEC], Budget(tokens=40)), ("tokens", 25)],
)
def test_to_dict_and_json_round_trip(compressor: Any, budget: Any) -> None:
    post = RagCompressNodePostprocessor(compressor=compressor, budget=budget)
    data = post.to_dict()
    assert data["class_name"] == "RagCompressNodePostprocessor"
    json.dumps(data)  # plain JSON: specs, never pickled objects
    for back in (
        RagCompressNodePostprocessor.from_dict(data),
        RagCompressNodePostprocessor.from_json(post.to_json()),
    ):
        assert back.compressor.spec() == post.compressor.spec()
        assert Budget.coerce(back.budget) == Budget.coerce(post.budget)
        assert [
            (n.node.node_id, n.node.get_content())
            for n in back.postprocess_nodes(scored_nodes(), None, QUERY)
        ] == [
            (n.node.node_id, n.node.get_content())
            for n in post.postprocess_nodes(scored_nodes(), None, QUERY)
        ]
    with pytest.raises(ValueError, match="ratio' or 'tokens"):
        RagCompressNodePostprocessor.from_dict({**data, "budget": {"share": 0.5}})


def test_bad_compressor_budget_and_nodes_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="no_such_method"):
        RagCompressNodePostprocessor(compressor={"name": "no_such_method"})
    with pytest.raises(TypeError, match="compress_with_stats"):
        RagCompressNodePostprocessor(compressor=object())
    with pytest.raises(ValueError, match="Budget"):
        RagCompressNodePostprocessor(compressor=SPEC, budget=-3)
    post = RagCompressNodePostprocessor(compressor=SPEC)
    with pytest.raises(TypeError, match="node #1"):
        post.postprocess_nodes([scored_nodes()[0], TextNode(text="bare")], query_str=QUERY)  # type: ignore[list-item]


def test_nodes_without_text_pass_through_and_duplicates_stay_one_to_one() -> None:
    image = NodeWithScore(node=ImageNode(id_="img", image_url="https://example.org/a.png"), score=0.5)
    jupiter = scored_nodes()[2]
    nodes = [jupiter, image, jupiter]
    out = RagCompressNodePostprocessor(compressor={**SPEC, "ratio": 1.0}).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert [n.node.node_id for n in out] == ["jupiter", "img", "jupiter"]
    assert out[1] is image


def test_async_matches_sync() -> None:
    post = RagCompressNodePostprocessor(compressor=SPEC)
    sync = post.postprocess_nodes(scored_nodes(), query_str=QUERY)
    asynchronous = asyncio.run(post.apostprocess_nodes(scored_nodes(), query_str=QUERY))
    assert [(n.node.node_id, n.score, n.node.get_content()) for n in asynchronous] == [
        (n.node.node_id, n.score, n.node.get_content()) for n in sync
    ]


def test_with_a_vector_index_retriever(index: VectorStoreIndex) -> None:
    retrieved = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    assert retrieved[0].node.node_id == "jupiter"
    out = RagCompressNodePostprocessor(compressor=SPEC).postprocess_nodes(retrieved, QueryBundle(QUERY))
    _check_identity(retrieved, out)
    assert out[0].node.node_id == "jupiter"
    assert "95" in out[0].node.get_content(), "the sentence that answers the query is kept"


def test_in_a_query_engine(index: VectorStoreIndex) -> None:
    # MockLLM echoes its prompt: the thing under test is what the postprocessor put in it.
    post = RagCompressNodePostprocessor(compressor=SPEC)
    engine = index.as_query_engine(llm=MockLLM(), node_postprocessors=[post], similarity_top_k=3)
    retrieved = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    response = engine.query(QUERY)
    _check_identity(retrieved, response.source_nodes)
    prompt = str(response)
    for node in response.source_nodes:
        assert node.node.get_content() in prompt
    dropped = {
        s.strip() + "."
        for n in retrieved
        for s in n.node.get_content().split(". ")
        if all(s.strip() not in m.node.get_content() for m in response.source_nodes)
    }
    assert dropped, "a ratio of 0.5 drops some sentences"
    assert not any(s in prompt for s in dropped)
    assert f"'{STATS_KEY}'" not in prompt and f"{STATS_KEY}:" not in prompt
    async_response = asyncio.run(engine.aquery(QUERY))
    assert [(n.node.node_id, n.node.get_content()) for n in async_response.source_nodes] == [
        (n.node.node_id, n.node.get_content()) for n in response.source_nodes
    ]
