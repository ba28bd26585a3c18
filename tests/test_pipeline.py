"""Pipeline from specs and YAML, run on a tiny seeded Llama (real tokenizer, random weights)."""

from __future__ import annotations

import math

import pytest

from ragcompress import Passage
from ragcompress.generate import Generator
from ragcompress.pipeline.core import KVSpec, Pipeline, PipelineError, find_pipeline, pipeline_names

PASSAGES = [
    Passage(
        "The Rhine flows around the famous rock Lorelei near Sankt Goarshausen. "
        "The gorge is a World Heritage Site. Vineyards line both banks.",
        id="rhine",
        score=0.9,
        metadata={"title": "Rhine"},
    ),
    Passage(
        "Warsaw is the capital of Poland. It lies on the Vistula River. "
        "The city is roughly 260 kilometres from the Baltic Sea.",
        id="warsaw",
        score=0.5,
        metadata={"title": "Warsaw"},
    ),
]
QUESTION = "What rock does the Rhine flow around?"


@pytest.fixture
def generator(tiny_llama, tokenizer):
    return Generator.from_model(tiny_llama, tokenizer, max_new_tokens=4)


def test_ready_specs_are_found_by_name():
    assert {"text-only", "hybrid"} <= set(pipeline_names())
    assert find_pipeline("text-only").name == "text-only.yaml"
    assert find_pipeline("hybrid.yaml").name == "hybrid.yaml"
    with pytest.raises(PipelineError, match="no pipeline 'nope'"):
        find_pipeline("nope")


def test_text_path_compresses_what_the_generator_reads(generator):
    pipe = Pipeline.from_spec({"compressors": [{"name": "random", "ratio": 0.5}]}, generator=generator)
    res = pipe.run(QUESTION, PASSAGES)
    c = res.compression
    assert c.compressor == "random" and c.tokens_after <= c.tokens_before // 2
    assert res.as_dict()["ratio"] == pytest.approx(c.tokens_before / c.tokens_after, rel=1e-3)
    # identity kept: a subset of the inputs, in order, same ids, scores and metadata
    by_id = {p.id: p for p in PASSAGES}
    assert [p.id for p in res.passages] == [p.id for p in PASSAGES if p.id in {q.id for q in res.passages}]
    for p in res.passages:
        assert p.score == by_id[p.id].score and p.metadata["title"] == by_id[p.id].metadata["title"]
    # the generator prefilled exactly the compressed passages, not the originals
    expected = generator.layout.prompt_ids([p.text for p in res.passages], QUESTION)
    assert res.generation.prompt_tokens == len(expected)
    assert res.generation.new_tokens <= 4
    assert res.latency_ms >= res.generation.total_ms


def test_budget_override_and_no_compressor(generator):
    pipe = Pipeline.from_spec({"compressors": []}, generator=generator)
    res = pipe.run(QUESTION, PASSAGES)
    assert res.compression.compressor == "none"
    assert res.compression.tokens_before == res.compression.tokens_after > 0
    assert [p.text for p in res.passages] == [p.text for p in PASSAGES]

    tight = Pipeline.from_spec({"compressors": [{"name": "random", "ratio": 0.9}]}, generator=generator)
    tight.budget = 0.3
    c = tight.run(QUESTION, PASSAGES).compression
    assert c.tokens_after <= math.floor(c.tokens_before * 0.3)


def test_chain_from_yaml_file(tmp_path, generator):
    spec = tmp_path / "mine.yaml"
    spec.write_text(
        "name: mine\n"
        "retriever: {k: 1}\n"
        "compressors:\n"
        "  - {name: random, ratio: 0.8, seed: 1}\n"
        "  - {name: random, ratio: 0.5, seed: 2}\n",
        encoding="utf-8",
    )
    pipe = Pipeline.from_yaml(spec, generator=generator)
    assert pipe.name == "mine" and pipe.k == 1
    assert pipe.compressor is not None and pipe.compressor.registered_name == "chain"
    res = pipe.run(QUESTION, PASSAGES)
    assert res.compression.tokens_after <= res.compression.tokens_before // 2


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("compressors: [{name: nosuch}]\n", "nosuch"),
        ("compressors: [{name: random, bogus: 1}]\n", "bogus"),
        ("generatr: {model: x}\n", "bad.yaml: generatr: unknown key"),
        ("retriever: {k: 2, top: 3}\n", "bad.yaml: retriever.top: unknown key"),
        ("retriever: [1, 2]\n", "bad.yaml: retriever: Input should be a valid dictionary"),
        ("kv: {cache_dirr: /tmp/x}\n", "bad.yaml: kv.cache_dirr: unknown key"),
        ("retriever: {k: -3}\n", "bad.yaml: retriever.k: out of range: must be >= 1, got -3"),
        (
            "compressors: [{name: random, ratio: half}]\n",
            "compressors\\[0\\].ratio: Input should be a valid number",
        ),
        ("compressors: [\n", "not valid YAML"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, generator, text, match):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(PipelineError, match=match) as info:
        Pipeline.from_yaml(spec, generator=generator)
    assert "bad.yaml" in str(info.value)


def test_run_needs_passages_or_a_retriever(generator):
    pipe = Pipeline.from_spec({}, generator=generator)
    with pytest.raises(PipelineError, match="no passages given and no retriever"):
        pipe.run(QUESTION)
    with pytest.raises(ValueError, match="non-empty"):
        pipe.run("  ", PASSAGES)


def test_kv_section_answers_from_cached_chunks(tmp_path, generator):
    pipe = Pipeline.from_spec({"compressors": []}, generator=generator, kv=KVSpec(cache_dir=str(tmp_path)))
    first = pipe.run(QUESTION, PASSAGES)
    assert first.generation.extra["chunks_encoded"] == len(PASSAGES)
    again = Pipeline.from_spec({"compressors": []}, generator=generator, kv=KVSpec(cache_dir=str(tmp_path)))
    second = again.run(QUESTION, PASSAGES)  # a fresh memory store: chunks come from disk
    assert second.generation.extra["chunks_encoded"] == 0
    assert second.generation.extra["chunks_hit"] == len(PASSAGES)
    assert second.answer == first.answer
    assert second.as_dict()["chunks_hit"] == len(PASSAGES)


def test_kv_section_on_the_fast_engine_gives_the_same_answer(tmp_path, generator):
    eager = Pipeline.from_spec({"compressors": []}, generator=generator, kv=KVSpec()).run(QUESTION, PASSAGES)
    fast_spec = KVSpec(cache_dir=str(tmp_path), fast_capacity=1024)
    fast = Pipeline.from_spec({"compressors": []}, generator=generator, kv=fast_spec).run(QUESTION, PASSAGES)
    assert fast.generation.extra["engine"] == "fast"
    assert fast.answer == eager.answer and fast.as_dict()["chunks_encoded"] == len(PASSAGES)
    with pytest.raises(ValueError, match="fast_capacity"):
        KVSpec(fast_capacity=0).build(generator)


def test_kv_section_places_chunks_in_an_int4_pool(generator):
    """``fast_placement`` from a spec: int4 chunks (groups of 8 = one block, half the tiny
    model's 16-channel heads) read in place from an int4 paged pool give the eager answer."""
    from ragcompress.kv.fast import Int4ChunkPool

    press = ({"name": "quantize", "bits": 4, "group_size": 8},)
    eager = Pipeline.from_spec({"compressors": []}, generator=generator, kv=KVSpec(presses=press))
    placement = {"name": "paged", "block_size": 8, "pool_tokens": 2048, "storage": "int4"}
    kv = KVSpec(presses=press, fast_capacity=1024, fast_placement=placement)
    fast = Pipeline.from_spec({"compressors": []}, generator=generator, kv=kv)
    got = fast.run(QUESTION, PASSAGES)
    assert got.generation.extra["engine"] == "fast" and got.answer == eager.run(QUESTION, PASSAGES).answer
    assert isinstance(fast.kv.engine.pool, Int4ChunkPool)


def test_run_batch_answers_each_question_as_run_does(generator):
    """``Pipeline.run_batch``: on the paged fast engine with ``fast_batch`` 2 (ragged steps,
    each question over its own passages), on the eager KV path and on the text path, every
    result is the one ``run`` gives that question alone, ids and metadata kept."""
    questions = [QUESTION, "How far is Warsaw from the Baltic Sea?", QUESTION]
    lists = [PASSAGES, PASSAGES[1:], PASSAGES[::-1]]
    paged = {"name": "paged", "block_size": 16, "pool_tokens": 2048}
    kvs = [KVSpec(fast_capacity=1024, fast_placement=paged, fast_batch=2), KVSpec(), None]
    for kv in kvs:
        pipe = Pipeline.from_spec({"compressors": []}, generator=generator, kv=kv)
        got = pipe.run_batch(questions, lists)
        alone = [pipe.run(q, p) for q, p in zip(questions, lists, strict=True)]
        assert [r.answer for r in got] == [r.answer for r in alone]
        assert [[x.id for x in r.passages] for r in got] == [[x.id for x in p] for p in lists]
        assert got[0].passages[0].metadata == {"title": "Rhine"}
    assert [r.generation.extra["batch"] for r in pipe_batches(generator, questions, lists)] == [2, 2, 1]
    with pytest.raises(ValueError, match="one list per question"):
        pipe.run_batch(questions, lists[:1])


def pipe_batches(generator, questions, lists):
    kv = KVSpec(fast_capacity=1024, fast_placement={"name": "paged", "pool_tokens": 2048}, fast_batch=2)
    return Pipeline.from_spec({"compressors": []}, generator=generator, kv=kv).run_batch(questions, lists)


def test_hybrid_spec_builds(tmp_path, generator):
    pipe = Pipeline.from_yaml(
        "hybrid", generator=generator, kv=KVSpec(cache_dir=str(tmp_path), presses=({"name": "quantize"},))
    )
    assert pipe.kv is not None and pipe.compressor is not None
    assert pipe.compressor.registered_name == "redundancy"
