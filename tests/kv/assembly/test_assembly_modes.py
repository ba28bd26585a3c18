"""Assembly modes on tiny fp32 models: each against a fresh / full prefill of the same prompt."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.assembly import available_assemblies, build_assembly
from tests.support.tiny import greedy_logits

from ..conftest import PASSAGES, QUESTION

MODES = [
    {"name": "concat"},
    {"name": "ape"},
    {"name": "ape", "temperature": 0.7, "scale": 0.8},
    {"name": "blend", "recompute": 0.15},
    {"name": "blend", "recompute": 0.5},
    {"name": "blend_question", "recompute": 0.5},
    {"name": "blend_question", "recompute": 0.5, "draft_tokens": 3},
    {"name": "blend_link", "recompute": 0.5},
]
SELECTIVE = ["blend", "blend_question", "blend_link"]


def answerer(model, tokenizer, spec, **kw):
    return KVAnswerer.from_generator(
        Generator.from_model(model, tokenizer, max_new_tokens=5), assembly=spec, **kw
    )


def full_logprobs(kv, passages, targets):
    """(len(targets), vocab): a fresh prefill of the whole prompt followed by the targets."""
    gen = kv.generator
    ids = gen.layout.prompt_ids(list(passages), QUESTION)
    logits = greedy_logits(gen.lm, ids + list(targets[:-1]))
    return logits[len(ids) - 1 :].float().log_softmax(-1)


TARGETS = [11, 220, 315, 42]


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "ape"},
        {"name": "blend", "recompute": 0.15},
        {"name": "blend_question", "recompute": 0.15},
        {"name": "blend_question", "recompute": 0.15, "draft_tokens": 3},
        {"name": "blend_link", "recompute": 0.15},
    ],
)
def test_one_passage_is_a_fresh_prefill(reader, tokenizer, spec):
    kv = answerer(reader, tokenizer, spec)
    for text in PASSAGES:
        got = kv.teacher_forced_logprobs(QUESTION, [text], TARGETS)
        torch.testing.assert_close(got, full_logprobs(kv, [text], TARGETS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", SELECTIVE)
def test_blend_full_recompute_is_a_full_prefill(reader, tokenizer, name):
    kv = answerer(reader, tokenizer, {"name": name, "recompute": 1.0})
    got = kv.teacher_forced_logprobs(QUESTION, PASSAGES, TARGETS)
    torch.testing.assert_close(got, full_logprobs(kv, PASSAGES, TARGETS), atol=1e-4, rtol=1e-4)
    assert kv.answer(QUESTION, PASSAGES).stats.extra["recompute"] == 1.0


@pytest.mark.parametrize("name", SELECTIVE)
def test_blend_zero_recompute_is_concat(reader, tokenizer, name):
    blend = answerer(reader, tokenizer, {"name": name, "recompute": 0.0})
    concat = answerer(reader, tokenizer, None)
    torch.testing.assert_close(
        blend.teacher_forced_logprobs(QUESTION, PASSAGES, TARGETS),
        concat.teacher_forced_logprobs(QUESTION, PASSAGES, TARGETS),
        atol=0.0,
        rtol=0.0,
    )
    a, b = blend.answer(QUESTION, PASSAGES), concat.answer(QUESTION, PASSAGES)
    assert a.token_ids == b.token_ids
    assert (a.stats.extra["assembly"], a.stats.extra["recompute"]) == (name, 0.0)
    assert (b.stats.extra["assembly"], b.stats.extra["recompute"]) == ("concat", 0.0)


@pytest.mark.parametrize("name", SELECTIVE)
def test_blend_moves_toward_the_full_prefill(tiny_llama, tokenizer, name):
    """More recompute, closer to a full prefill (measured on the tiny model: max |Δ log p|)."""
    errors = []
    for share in (0.0, 0.5, 1.0):
        kv = answerer(tiny_llama, tokenizer, {"name": name, "recompute": share})
        got = kv.teacher_forced_logprobs(QUESTION, PASSAGES, TARGETS)
        errors.append(float((got - full_logprobs(kv, PASSAGES, TARGETS)).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4


@pytest.mark.parametrize("spec", MODES, ids=lambda s: str(sorted(s.items())))
def test_modes_are_deterministic_and_teacher_forcing_agrees_with_answer(tiny_llama, tokenizer, spec):
    kv = answerer(tiny_llama, tokenizer, spec)
    a, b = kv.answer(QUESTION, PASSAGES), kv.answer(QUESTION, PASSAGES)
    assert a.token_ids == b.token_ids and a.token_ids
    assert a.stats.extra["assembly"] == spec["name"]
    logprobs = kv.teacher_forced_logprobs(QUESTION, PASSAGES, a.token_ids)
    assert logprobs.shape == (len(a.token_ids), tiny_llama.config.vocab_size)
    # greedy decoding under the same context picks exactly the teacher-forced argmax
    assert tuple(logprobs.argmax(-1).tolist()) == a.token_ids
    assert "".join(kv.stream(QUESTION, PASSAGES)).strip() == a.text


def test_ape_changes_the_answer_context(tiny_llama, tokenizer):
    """APE with several passages is not concat (shared positions, scaled attention)."""
    ape = answerer(tiny_llama, tokenizer, {"name": "ape", "temperature": 0.7, "scale": 0.8})
    concat = answerer(tiny_llama, tokenizer, None)
    a = ape.teacher_forced_logprobs(QUESTION, PASSAGES, TARGETS)
    b = concat.teacher_forced_logprobs(QUESTION, PASSAGES, TARGETS)
    assert not torch.allclose(a, b, atol=1e-3)
    assert ape.answer(QUESTION, PASSAGES).stats.extra["recompute"] == 0.0


def test_chunks_are_shared_across_modes(tiny_llama, tokenizer):
    """The mode enters nothing in the chunk key: one store serves every mode without re-encoding."""
    first = answerer(tiny_llama, tokenizer, None)
    first.answer(QUESTION, PASSAGES)
    for spec in MODES[1:]:
        kv = KVAnswerer(first.generator, first.cache, build_assembly(spec))
        assert kv.answer(QUESTION, PASSAGES).stats.extra["chunks_encoded"] == 0
    keys = {c.key for c in first.cache.get_or_encode(PASSAGES)[0]}
    assert len(keys) == len(PASSAGES)


@pytest.mark.parametrize("spec", MODES, ids=lambda s: str(sorted(s.items())))
def test_specs_round_trip(spec):
    mode = build_assembly(spec)
    assert build_assembly(mode.spec()).spec() == mode.spec()
    assert mode.spec()["name"] == spec["name"]
    assert {k: v for k, v in mode.spec().items() if k in spec} == spec


def test_registry_and_defaults():
    assert {"concat", "ape", "blend", "blend_question", "blend_link"} <= set(available_assemblies())
    assert build_assembly(None).name == "concat"
    assert build_assembly("ape").spec() == {"name": "ape", "temperature": 1.0, "scale": 1.0}
    assert build_assembly({"name": "blend"}).spec() == {"name": "blend", "recompute": 0.15, "check_layer": 1}
    assert build_assembly("blend_question").spec() == {
        "name": "blend_question",
        "recompute": 0.15,
        "last_tokens": 8,
        "draft_tokens": 0,
    }
    every = {"name": "blend_question", "recompute": 0.3, "last_tokens": None, "draft_tokens": 0}
    assert build_assembly(every).spec() == every


@pytest.mark.parametrize("spec", MODES, ids=lambda s: str(sorted(s.items())))
def test_no_passages_answers_from_the_prefix(tiny_llama, tokenizer, spec):
    kv = answerer(tiny_llama, tokenizer, spec)
    got = kv.teacher_forced_logprobs(QUESTION, [], TARGETS)
    torch.testing.assert_close(got, full_logprobs(kv, [], TARGETS), atol=1e-4, rtol=1e-4)
    assert kv.answer(QUESTION, []).stats.extra["recompute"] == 0.0
