"""FastKVAnswerer runs every assembly mode it accepts with the eager path's greedy tokens
(CPU: the fast step with reference attention; the GPU variant is marked ``gpu``)."""

from __future__ import annotations

import pytest

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.quantize import QuantizePress

from ..conftest import PASSAGES, QUESTION

FAST_MODES = [
    {"name": "concat"},
    {"name": "ape"},
    {"name": "ape", "temperature": 0.7},
    {"name": "blend", "recompute": 0.3},
    {"name": "blend", "recompute": 1.0},
    {"name": "blend_question", "recompute": 0.3},
    {"name": "blend_question", "recompute": 0.3, "draft_tokens": 4},
    {"name": "blend_link", "recompute": 0.3},
]
QUESTIONS = [QUESTION, "Which mountain is the highest in Africa?"]


def ids(spec):
    return ",".join(f"{k}={v}" for k, v in spec.items())


def check_same_tokens(gen, spec, presses=(), capacity=512):
    eager = KVAnswerer.from_generator(gen, presses=presses, assembly=spec)
    fast = FastKVAnswerer.from_generator(
        gen, presses=presses, assembly=spec, capacity=capacity, max_question=64
    )
    for q in QUESTIONS:
        for passages in (PASSAGES, PASSAGES[::-1], PASSAGES[1:]):
            want, got = eager.answer(q, passages), fast.answer(q, passages)
            assert got.token_ids == want.token_ids, (spec, q)
            assert got.stats.extra["assembly"] == spec["name"]
            assert got.stats.extra["recompute"] == pytest.approx(want.stats.extra["recompute"])
            assert got.stats.context_tokens == want.stats.context_tokens


@pytest.mark.parametrize("spec", FAST_MODES, ids=ids)
def test_fast_matches_eager_per_mode(tiny_llama, tokenizer, spec):
    check_same_tokens(Generator.from_model(tiny_llama, tokenizer, max_new_tokens=6), spec)


@pytest.mark.parametrize("spec", [{"name": "ape"}, {"name": "blend", "recompute": 0.5}], ids=ids)
def test_fast_matches_eager_over_compressed_chunks(tiny_llama, tokenizer, spec):
    presses = (KnormPress(ratio=0.5), QuantizePress(bits=4, group_size=8))
    check_same_tokens(Generator.from_model(tiny_llama, tokenizer, max_new_tokens=6), spec, presses)


def test_fast_refuses_ape_scale_at_build(tiny_llama, tokenizer):
    gen = Generator.from_model(tiny_llama, tokenizer, max_new_tokens=6)
    with pytest.raises(ValueError, match="scale"):
        FastKVAnswerer.from_generator(gen, assembly={"name": "ape", "scale": 0.9}, capacity=512)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", FAST_MODES, ids=ids)
def test_gpu_fast_matches_eager_per_mode_fp32_graphs(tokenizer, spec):
    """fp32 on CUDA: captured graphs give the eager path's greedy tokens for every mode."""
    from tests.support.tiny import make_tiny_llama

    tok = tokenizer
    gen = Generator.from_model(make_tiny_llama(len(tok)).cuda(), tok, max_new_tokens=6)
    fast = FastKVAnswerer.from_generator(gen, assembly=spec, capacity=512, max_question=64)
    assert fast.engine.graphs
    check_same_tokens(gen, spec)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [m for m in FAST_MODES if m["name"] != "concat"], ids=ids)
def test_gpu_gemma3_fast_matches_eager_per_mode_fp32(tokenizer, spec):
    """fp32 on CUDA, Gemma 3 (local sliding-window layers, windowed Triton context pass): every
    assembled mode gives the eager path's greedy tokens."""
    from tests.support.tiny import make_tiny_gemma3

    gen = Generator.from_model(make_tiny_gemma3(len(tokenizer), seed=4).cuda(), tokenizer, max_new_tokens=6)
    check_same_tokens(gen, spec, capacity=256)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", FAST_MODES, ids=ids)
def test_gpu_bf16_fast_first_token_logprobs_close_to_eager(tokenizer, spec):
    """bf16 on CUDA (flash cascade): the fast prefill's next-token distribution is the eager one's."""
    import torch

    from ragcompress.kv.fast import FlashCascade
    from tests.support.tiny import make_tiny_llama

    tok = tokenizer
    model = make_tiny_llama(len(tok), seed=3).cuda().to(torch.bfloat16)
    gen = Generator.from_model(model, tok, max_new_tokens=6)
    eager = KVAnswerer.from_generator(gen, assembly=spec)
    fast = FastKVAnswerer.from_generator(gen, assembly=spec, capacity=512, max_question=64)
    assert isinstance(fast.engine.attention, FlashCascade)
    for passages in (PASSAGES, PASSAGES[::-1]):
        got = fast.answer(QUESTION, passages, max_new_tokens=1)
        logits = fast.engine.last_logits
        assert logits is not None
        got_lp = logits[0].float().log_softmax(-1)
        want_lp = eager.teacher_forced_logprobs(QUESTION, passages, [0])[0].to(got_lp.device)
        assert ((got_lp - want_lp).norm() / want_lp.norm()).item() < 2e-2, spec
        assert got.stats.extra["assembly"] == spec["name"]
