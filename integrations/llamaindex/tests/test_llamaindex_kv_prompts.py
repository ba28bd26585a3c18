"""RagCompressKVSynthesizer's text_qa_template and response_mode, with real LlamaIndex prompt
templates and query engines over a tiny seeded Llama behind a real KVAnswerer."""

from __future__ import annotations

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.ragcompress import STATS_KEY, RagCompressKVSynthesizer
from llama_index.postprocessor.ragcompress.templates import layout_for

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.sampling import Sampling

QUERY = "How many moons does Jupiter have?"
TEXTS = [
    "Jupiter is the largest planet in the Solar System. Jupiter has at least 95 known moons.",
    "Mars is the fourth planet from the Sun. Mars has two small moons, Phobos and Deimos.",
    "Johannes Gutenberg introduced movable-type printing to Europe around 1440.",
]
TEMPLATE = PromptTemplate("Use these notes.\n{context_str}\nNow answer: {query_str}\nAnswer in {{one}} line.")
CHAT_TEMPLATE = ChatPromptTemplate(
    [
        ChatMessage(role=MessageRole.SYSTEM, content="You are a terse astronomer."),
        ChatMessage(role=MessageRole.USER, content="Notes:\n{context_str}\nQ: {query_str}"),
    ]
)


def nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=1.0 - 0.1 * i) for i, t in enumerate(TEXTS)
    ]


@pytest.fixture(scope="module")
def generator() -> Generator:
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tok = load_tokenizer()
    return Generator.from_model(
        make_tiny_llama(len(tok), seed=0, initializer_range=0.2), tok, max_new_tokens=6
    )


def _rendered(generator: Generator, system: str, user: str) -> str:
    tok = generator.tokenizer
    turns = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return str(tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False))


def test_a_plain_template_becomes_the_layout(generator: Generator) -> None:
    layout = layout_for(TEMPLATE, generator.tokenizer, generator.system)
    ids = layout.prompt_ids(TEXTS[:2], QUERY)
    # The template's text around the nodes, one blank line after each node, the question last.
    # Braces stay as LlamaIndex's own formatting leaves them.
    user = f"Use these notes.\n{TEXTS[0]}\n\n{TEXTS[1]}\n\nNow answer: {QUERY}\n" + "Answer in {{one}} line."
    assert user == TEMPLATE.format(context_str=f"{TEXTS[0]}\n\n{TEXTS[1]}\n", query_str=QUERY)
    assert generator.tokenizer.decode(ids) == _rendered(generator, generator.system, user)


def test_a_chat_template_sets_the_system_turn(generator: Generator) -> None:
    layout = layout_for(CHAT_TEMPLATE, generator.tokenizer, generator.system)
    user = f"Notes:\n{TEXTS[0]}\n\nQ: {QUERY}"
    assert generator.tokenizer.decode(layout.prompt_ids(TEXTS[:1], QUERY)) == _rendered(
        generator, "You are a terse astronomer.", user
    )
    # LlamaIndex's own default QA template maps too.
    assert "Context information is below" in generator.tokenizer.decode(
        layout_for(DEFAULT_TEXT_QA_PROMPT, generator.tokenizer, generator.system).prefix_ids()
    )


def test_the_synthesizer_answers_in_the_template(generator: Generator) -> None:
    plain = RagCompressKVSynthesizer.from_generator(generator)
    templated = RagCompressKVSynthesizer.from_generator(generator, text_qa_template=TEMPLATE)
    assert templated.get_prompts() == {"text_qa_template": TEMPLATE} and plain.get_prompts() == {}
    first = templated.synthesize(QUERY, nodes())
    assert isinstance(first, Response) and first.metadata is not None
    assert first.metadata[STATS_KEY]["chunks_encoded"] == 3
    layout = layout_for(TEMPLATE, generator.tokenizer, generator.system)
    assert templated.answerer.generator.layout == layout and templated.answerer.generator.lm is generator.lm
    assert str(first) != str(plain.synthesize(QUERY, nodes())), "precondition: the layout changes the answer"
    again = templated.synthesize(QUERY, nodes())
    assert str(again) == str(first) and again.metadata is not None
    assert again.metadata[STATS_KEY]["chunks_hit"] == 3


def test_update_prompts_through_a_query_engine(generator: Generator, embed_model: BaseEmbedding) -> None:
    synth = RagCompressKVSynthesizer.from_generator(generator)
    index = VectorStoreIndex([n.node for n in nodes()], embed_model=embed_model)
    engine = RetrieverQueryEngine(index.as_retriever(similarity_top_k=2), response_synthesizer=synth)
    before = engine.query(QUERY)
    engine.update_prompts({"response_synthesizer:text_qa_template": CHAT_TEMPLATE})
    assert engine.get_prompts()["response_synthesizer:text_qa_template"] == CHAT_TEMPLATE
    after = engine.query(QUERY)
    assert after.metadata is not None and after.metadata[STATS_KEY]["chunks_encoded"] == 2, (
        "chunks of another layout are never served"
    )
    expected = RagCompressKVSynthesizer.from_generator(generator, text_qa_template=CHAT_TEMPLATE)
    assert str(after) == str(expected.synthesize(QUERY, after.source_nodes)) != str(before)


@pytest.mark.parametrize(
    ("template", "why"),
    [
        (PromptTemplate("{query_str}\n{context_str}"), "once and then"),
        (PromptTemplate("Notes: {context_str}"), "once and then"),
        (PromptTemplate("{context_str} {query_str} in {language}"), "partial_format"),
        (
            ChatPromptTemplate(
                [
                    ChatMessage(role=MessageRole.SYSTEM, content="Context: {context_str}"),
                    ChatMessage(role=MessageRole.USER, content="{query_str}"),
                ]
            ),
            "system message",
        ),
        (
            ChatPromptTemplate(
                [
                    ChatMessage(role=MessageRole.USER, content="{context_str} {query_str}"),
                    ChatMessage(role=MessageRole.ASSISTANT, content="Sure."),
                ]
            ),
            "exactly one user message",
        ),
    ],
)
def test_templates_that_cannot_map_are_refused(
    generator: Generator, template: PromptTemplate, why: str
) -> None:
    synth = RagCompressKVSynthesizer.from_generator(generator)
    answerer = synth.answerer
    with pytest.raises(ValueError, match=why):
        synth.update_prompts({"text_qa_template": template})
    assert synth.answerer is answerer and synth.get_prompts() == {}  # nothing changed
    with pytest.raises(ValueError, match="refine_template"):
        synth.update_prompts({"refine_template": TEMPLATE})


def test_response_modes(generator: Generator) -> None:
    compact = RagCompressKVSynthesizer.from_generator(generator).synthesize(QUERY, nodes())
    simple = RagCompressKVSynthesizer.from_generator(generator, response_mode="simple_summarize")
    assert str(simple.synthesize(QUERY, nodes())) == str(compact)
    generation = RagCompressKVSynthesizer.from_generator(generator, response_mode="generation")
    out = generation.synthesize(QUERY, nodes())
    assert str(out) == KVAnswerer.from_generator(generator).answer(QUERY, []).text
    assert [n.node.node_id for n in out.source_nodes] == ["n0", "n1", "n2"]
    assert out.metadata is not None and out.metadata[STATS_KEY]["chunks"] == 0
    no_text = RagCompressKVSynthesizer.from_generator(generator, response_mode="no_text")
    out = no_text.synthesize(QUERY, nodes())
    assert isinstance(out, Response) and out.response == "" and len(out.source_nodes) == 3
    context = RagCompressKVSynthesizer.from_generator(generator, response_mode="context_only", streaming=True)
    streamed = context.synthesize(QUERY, nodes())
    assert isinstance(streamed, StreamingResponse)
    assert "".join(streamed.response_gen) == "\n\n".join(TEXTS)


@pytest.mark.parametrize("mode", ["refine", "tree_summarize", "accumulate", "compact_accumulate", "bogus"])
def test_other_response_modes_are_refused(generator: Generator, mode: str) -> None:
    with pytest.raises(ValueError, match="response_mode"):
        RagCompressKVSynthesizer.from_generator(generator, response_mode=mode)


def test_sampling(generator: Generator) -> None:
    settings = Sampling(temperature=1.5, top_k=50, seed=3, stop=("\n",))
    reference = KVAnswerer.from_generator(generator).answer(QUERY, TEXTS, sampling=settings).text
    synth = RagCompressKVSynthesizer.from_generator(generator, sampling=settings)
    assert str(synth.synthesize(QUERY, nodes())) == reference
    streaming = RagCompressKVSynthesizer.from_generator(generator, sampling=settings, streaming=True)
    out = streaming.synthesize(QUERY, nodes())
    assert isinstance(out, StreamingResponse) and "".join(out.response_gen) == reference
    with pytest.raises(TypeError, match="sampling"):
        RagCompressKVSynthesizer.from_generator(generator, sampling={"temperature": 1.0})  # type: ignore[arg-type]
