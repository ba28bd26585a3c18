"""Every model family in ``tests.support.tiny.TINY_FAMILIES`` on the KV path: a single cached
chunk reproduces a fresh prefill (also moved to another offset), and the fast engine (CPU
reference kernels) gives the eager path's greedy tokens over several chunks. Qwen2 is the
family with QKV biases, RoPE theta 1e6 and an untied output layer. Gemma 3 (local sliding-window
layers, one RoPE table per layer type) runs the eager cases only: the fast engine refuses it
(tests/kv/test_gemma3.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.context import generate_from_chunks, prepare_context
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.models.arch import arch_for
from ragcompress.models.compat import cache_kwargs
from ragcompress.models.rope import Rotary, rerotate
from tests.support.tiny import TINY_FAMILIES, greedy_logits, make_tiny_gemma3

from .conftest import PASSAGES, QUESTION
from .test_fast_answer import PASSAGES as FAST_PASSAGES
from .test_fast_answer import PRESSES, assert_fast_matches_eager

# the families the eager KV path runs; the fast engine's cases take TINY_FAMILIES
EAGER_FAMILIES = {**TINY_FAMILIES, "gemma3": make_tiny_gemma3}


@pytest.fixture(scope="module", params=sorted(TINY_FAMILIES))
def family_model(request, tokenizer):
    return TINY_FAMILIES[request.param](len(tokenizer), seed=2)


@pytest.fixture(scope="module", params=sorted(EAGER_FAMILIES))
def eager_model(request, tokenizer):
    return EAGER_FAMILIES[request.param](len(tokenizer), seed=2)


def question_logits(model: Any, layout: Any, chunk: Any, question: str, shift: int) -> torch.Tensor:
    """Last-token logits (vocab,) of the question prefilled against prefix + ``chunk``, the whole
    context moved ``shift`` positions later (RoPE attention sees only relative positions; each
    layer's keys move with its own table, the local layers' window with the context)."""
    ids = layout.question_ids(question)
    ctx = prepare_context(model, layout, [chunk], ids)
    arch = arch_for(model)
    layer: Any
    for li, layer in enumerate(ctx.cache.layers):
        layer.keys = rerotate(layer.keys, shift, Rotary.from_arch(arch, li))
    pos, phys = ctx.position, ctx.cache.get_seq_length()
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([ids]),
            **cache_kwargs(model, ctx.cache),
            position_ids=torch.arange(pos + shift, pos + shift + len(ids))[None],
            cache_position=torch.arange(phys, phys + len(ids)),
            **ctx.step_kwargs(phys, len(ids)),
        )
    return out.logits[0, -1]


def test_qwen2_family_has_the_parts_it_stands_for(tokenizer):
    model = TINY_FAMILIES["qwen2"](len(tokenizer))
    attn = model.model.layers[0].self_attn
    assert all(getattr(attn, p).bias.abs().max() > 0.05 for p in ("q_proj", "k_proj", "v_proj"))
    assert model.config.rope_parameters["rope_theta"] == 1e6
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("shift", [0, 1500])
def test_single_chunk_matches_fresh_prefill(eager_model, tokenizer, shift):
    family_model = eager_model
    gen = Generator.from_model(family_model, tokenizer, max_new_tokens=4)
    enc = ChunkEncoder.from_generator(gen)
    layout: Any = enc.layout
    for text, chunk in zip(PASSAGES, enc.encode(PASSAGES), strict=True):
        ref = greedy_logits(family_model, layout.prompt_ids([text], QUESTION))[-1]
        got = question_logits(family_model, layout, chunk, QUESTION, shift)
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)
        if shift == 0:
            assert (
                generate_from_chunks(gen, QUESTION, [chunk]).token_ids
                == gen.generate(QUESTION, [text]).token_ids
            )


def test_kv_answerer_on_one_passage_answers_like_a_fresh_prefill(eager_model, tokenizer):
    gen = Generator.from_model(eager_model, tokenizer, max_new_tokens=8)
    kv = KVAnswerer.from_generator(gen)
    for text in FAST_PASSAGES:
        want = gen.generate(QUESTION, [text]).token_ids
        assert kv.answer(QUESTION, [text]).token_ids == want and len(want) > 0


@pytest.mark.parametrize("presses", PRESSES[:2])
def test_fast_answers_match_the_eager_path(family_model, tokenizer, presses):
    gen = Generator.from_model(family_model, tokenizer, max_new_tokens=10)
    assert_fast_matches_eager(
        KVAnswerer.from_generator(gen, presses=presses),
        FastKVAnswerer.from_generator(gen, presses=presses, capacity=512, max_question=64),
    )
