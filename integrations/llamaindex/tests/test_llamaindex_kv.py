"""RagCompressKVSynthesizer with real LlamaIndex objects (TextNode, NodeWithScore, a
VectorStoreIndex over the packaged MiniLM, RetrieverQueryEngine) and a tiny seeded Llama
behind a real KVAnswerer."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode
from llama_index.postprocessor.ragcompress import STATS_KEY, RagCompressKVSynthesizer

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer

QUERY = "How many moons does Jupiter have?"
CORPUS = [
    ("jupiter", "Jupiter is the largest planet in the Solar System. Jupiter has at least 95 known moons."),
    ("mars", "Mars is the fourth planet from the Sun. Mars has two small moons, Phobos and Deimos."),
    ("printing", "Johannes Gutenberg introduced movable-type printing to Europe around 1440."),
    ("mitochondria", "Mitochondria are organelles that produce most of the cell's supply of ATP."),
]


def make_nodes() -> list[TextNode]:
    return [TextNode(id_=i, text=t, metadata={"source": f"{i}.txt"}) for i, t in CORPUS]


def scored(nodes: list[TextNode]) -> list[NodeWithScore]:
    return [NodeWithScore(node=n, score=0.9 - 0.1 * i) for i, n in enumerate(nodes)]


@pytest.fixture(scope="module")
def generator() -> Generator:
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tok = load_tokenizer()
    # A wider init than the default makes the random model's greedy answers depend on the
    # context, so that order and content changes show up in the text.
    model = make_tiny_llama(len(tok), seed=0, initializer_range=0.2)
    return Generator.from_model(model, tok, max_new_tokens=6)


@pytest.fixture()
def synth(generator: Generator) -> RagCompressKVSynthesizer:
    return RagCompressKVSynthesizer.from_generator(generator)


def _direct(generator: Generator, query: str, nodes: list[NodeWithScore]) -> str:
    """The reference: a separate KVAnswerer over the same generator, called directly."""
    return KVAnswerer.from_generator(generator).answer(query, [n.node.get_content() for n in nodes]).text


def test_second_query_encodes_nothing_and_keeps_node_identity(
    synth: RagCompressKVSynthesizer, generator: Generator
) -> None:
    nodes = scored(make_nodes()[:3])
    first = synth.synthesize(QUERY, nodes)
    assert isinstance(first, Response) and first.metadata is not None
    assert first.metadata[STATS_KEY]["chunks_encoded"] == 3 and first.metadata[STATS_KEY]["chunks_hit"] == 0
    second = synth.synthesize(QUERY, nodes)
    assert isinstance(second, Response) and second.metadata is not None
    stats = second.metadata[STATS_KEY]
    assert stats["chunks_hit"] == 3 and stats["chunks_encoded"] == 0 and stats["chunks"] == 3
    assert {"ttft_ms", "total_ms", "new_tokens"} <= set(stats)
    assert second.response == first.response and first.response
    assert first.response == _direct(generator, QUERY, nodes)
    assert all(a is b for a, b in zip(second.source_nodes, nodes, strict=True))
    assert second.metadata["jupiter"] == {"source": "jupiter.txt"}


def test_retrieval_order_is_the_chunk_order(synth: RagCompressKVSynthesizer, generator: Generator) -> None:
    nodes = scored(make_nodes()[:3])
    reverse = nodes[::-1]
    expected, expected_reverse = _direct(generator, QUERY, nodes), _direct(generator, QUERY, reverse)
    assert expected != expected_reverse, "precondition: this model's answer depends on the order"
    assert str(synth.synthesize(QUERY, nodes)) == expected
    out = synth.synthesize(QUERY, reverse)
    assert str(out) == expected_reverse
    assert out.metadata is not None and out.metadata[STATS_KEY]["chunks_hit"] == 3
    assert [n.node.node_id for n in out.source_nodes] == ["printing", "mars", "jupiter"]


def test_no_nodes_answers_from_the_prefix_alone(
    synth: RagCompressKVSynthesizer, generator: Generator
) -> None:
    out = synth.synthesize(QUERY, [])
    assert isinstance(out, Response) and out.metadata is not None
    assert out.source_nodes == [] and out.metadata[STATS_KEY]["chunks"] == 0
    assert out.response == KVAnswerer.from_generator(generator).answer(QUERY, []).text


def test_nodes_without_text_are_sources_but_not_chunks(synth: RagCompressKVSynthesizer) -> None:
    nodes = scored(make_nodes()[:2])
    with_image = [nodes[0], NodeWithScore(node=ImageNode(id_="img", image="aGVsbG8="), score=0.5), nodes[1]]
    out = synth.synthesize(QUERY, with_image)
    assert [n.node.node_id for n in out.source_nodes] == ["jupiter", "img", "mars"]
    assert out.metadata is not None and out.metadata[STATS_KEY]["chunks"] == 2
    assert str(out) == str(synth.synthesize(QUERY, nodes))


def test_streaming(generator: Generator) -> None:
    nodes = scored(make_nodes()[:2])
    plain = RagCompressKVSynthesizer.from_generator(generator).synthesize(QUERY, nodes)
    streaming = RagCompressKVSynthesizer.from_generator(generator, streaming=True)
    out = streaming.synthesize(QUERY, nodes)
    assert isinstance(out, StreamingResponse) and out.metadata is not None
    pieces = list(out.response_gen)
    assert len(pieces) > 1 and "".join(pieces) == plain.response
    stats = out.metadata[STATS_KEY]  # filled in as the stream ran
    assert stats["chunks_encoded"] == 2 and stats["ttft_ms"] <= stats["total_ms"]
    assert all(a is b for a, b in zip(out.source_nodes, nodes, strict=True))

    async def run() -> list[str]:
        response = await streaming.asynthesize(QUERY, nodes)
        assert isinstance(response, AsyncStreamingResponse)
        return [p async for p in response.async_response_gen()]

    assert "".join(asyncio.run(run())) == plain.response


def test_async_and_text_chunks(synth: RagCompressKVSynthesizer, generator: Generator) -> None:
    nodes = scored(make_nodes()[1:4])
    sync = synth.synthesize(QUERY, nodes)
    out = asyncio.run(synth.asynthesize(QUERY, nodes))
    assert isinstance(out, Response) and out.response == sync.response
    assert out.metadata is not None and out.metadata[STATS_KEY]["chunks_encoded"] == 0
    # BaseSynthesizer's text entry point: each text chunk is its own cached chunk.
    texts = [n.node.get_content() for n in nodes]
    assert synth.get_response(QUERY, texts) == sync.response
    assert asyncio.run(synth.aget_response(QUERY, texts)) == sync.response


def test_query_engines_over_a_vector_index(
    synth: RagCompressKVSynthesizer, generator: Generator, embed_model: BaseEmbedding
) -> None:
    index = VectorStoreIndex(make_nodes(), embed_model=embed_model)
    retriever = index.as_retriever(similarity_top_k=3)
    retrieved = retriever.retrieve(QUERY)
    assert retrieved[0].node.node_id == "jupiter"
    engine = RetrieverQueryEngine(retriever, response_synthesizer=synth)
    first = engine.query(QUERY)
    assert [(n.node.node_id, n.score) for n in first.source_nodes] == [
        (n.node.node_id, n.score) for n in retrieved
    ]
    assert str(first) == _direct(generator, QUERY, retrieved)
    # as_query_engine insists on resolving an LLM; the synthesizer never calls it.
    engine2 = index.as_query_engine(llm=MockLLM(), response_synthesizer=synth, similarity_top_k=3)
    second = engine2.query(QUERY)
    assert str(second) == str(first)
    assert second.metadata is not None and second.metadata[STATS_KEY]["chunks_encoded"] == 0
    assert [n.node.node_id for n in second.source_nodes] == [n.node.node_id for n in retrieved]
    third = asyncio.run(engine.aquery(QUERY))
    assert str(third) == str(first)


def test_bad_input_is_rejected_clearly(synth: RagCompressKVSynthesizer) -> None:
    with pytest.raises(TypeError, match="node #1"):
        synth.synthesize(QUERY, [scored(make_nodes())[0], "not a node"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="KVAnswerer"):
        RagCompressKVSynthesizer(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_new_tokens"):
        RagCompressKVSynthesizer(synth.answerer, max_new_tokens=0)
