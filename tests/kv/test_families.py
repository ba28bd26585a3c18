"""Every model family in ``tests.support.tiny.TINY_FAMILIES`` on the KV path: a single cached
chunk reproduces a fresh prefill (also moved to another offset, and through a calibrated
low-rank basis that un-rotates keys), the fast engine's step reproduces a fresh prefill's
logits and (CPU reference kernels) gives the eager path's greedy tokens over several chunks
(uncompressed, key-norm and KVzip evicted, each then int4), and chunk keys differ across
families. Qwen2 is the family with QKV biases, RoPE theta 1e6 and
an untied output layer; Qwen3 the one with per-head q/k norms before RoPE; Gemma 3 the one with
local sliding-window layers (window 6, shorter than prefix + passages), one RoPE table per layer
type, sandwich norms and soft-capped output logits (blend refuses it; pre-RoPE low-rank bases
need one table, so its basis is fitted after RoPE)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch

import ragcompress
from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.context import generate_from_chunks, prepare_context
from ragcompress.kv.encode.calibrate import calibrate
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.fast import EagerStep, FastGenerator
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.models.arch import arch_for
from ragcompress.models.compat import cache_kwargs
from ragcompress.models.rope import Rotary, rerotate
from tests.support.tiny import TINY_FAMILIES, greedy_logits

from .conftest import PASSAGES, QUESTION
from .test_fast_answer import PASSAGES as FAST_PASSAGES
from .test_fast_answer import PRESSES, assert_fast_matches_eager
from .test_fast_path import _split


@pytest.fixture(scope="module", params=sorted(TINY_FAMILIES))
def family_model(request, tokenizer):
    return TINY_FAMILIES[request.param](len(tokenizer), seed=2)


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


def test_qwen3_family_has_the_parts_it_stands_for(tokenizer):
    model = TINY_FAMILIES["qwen3"](len(tokenizer))
    arch = arch_for(model)
    assert arch.qk_norm and not arch.qkv_bias
    for layer in model.model.layers:
        attn = layer.self_attn
        assert attn.q_proj.bias is None and attn.k_proj.bias is None
        for norm in (attn.q_norm, attn.k_norm):
            w, half = norm.weight, arch.head_dim // 2
            # not ones, and not equal over a rotated pair (j, j + d/2): only then would the norm
            # commute with RoPE, so a path applying it after RoPE would not show
            assert (w - 1).abs().max() > 0.2 and not torch.allclose(w[:half], w[half:])


@pytest.mark.parametrize("shift", [0, 1500])
def test_single_chunk_matches_fresh_prefill(family_model, tokenizer, shift):
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


def test_kv_answerer_on_one_passage_answers_like_a_fresh_prefill(family_model, tokenizer):
    gen = Generator.from_model(family_model, tokenizer, max_new_tokens=8)
    kv = KVAnswerer.from_generator(gen)
    for text in FAST_PASSAGES:
        want = gen.generate(QUESTION, [text]).token_ids
        assert kv.answer(QUESTION, [text]).token_ids == want and len(want) > 0


def test_calibrated_full_rank_basis_reproduces_the_logits(family_model, tokenizer, tmp_path):
    """Low-rank un-rotates cached keys (post-norm, post-RoPE) to the basis's pre-RoPE frame and
    decoding rotates them back: at full rank the chunk still gives a fresh prefill's logits."""
    gen = Generator.from_model(family_model, tokenizer)
    enc = ChunkEncoder.from_generator(gen)
    path = tmp_path / "basis.safetensors"
    arch = arch_for(family_model)
    one_table = len(set(arch.rope)) == 1  # a pre-RoPE basis un-rotates with one table
    calibrate(family_model, tokenizer, PASSAGES * 2, rank=arch.head_dim, pre_rope=one_table).save(path)
    press = ragcompress.build({"name": "lowrank", "basis": str(path)})
    layout: Any = enc.layout
    for text, chunk in zip(PASSAGES, enc.encode(PASSAGES, [press]), strict=True):
        ref = greedy_logits(family_model, layout.prompt_ids([text], QUESTION))[-1]
        got = question_logits(family_model, layout, chunk, QUESTION, 0)
        torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)


def _fast_logits(model: Any, chunks_from: Any, ctx: tuple[list[int], list[list[int]]], q: list[int]) -> Any:
    """Last-token logits (vocab,) of the question ``q`` prefilled by the fast engine's eager step
    over ``model``, against the prefix and passages ``ctx`` as ``chunks_from`` caches them."""
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=4, step=EagerStep(model))
    fast.load(*_split(chunks_from, *ctx))
    fast.prefill([q])
    logits = fast.last_logits
    assert logits is not None
    return logits[0].clone()


def test_fast_step_reproduces_a_fresh_prefill(family_model):
    """The step computes the question's own queries/keys (projections, QK-norms, RoPE): its
    logits are a fresh prefill's. For Qwen3, the same step over a model whose k_norm is skipped
    lands far off: the comparison would catch a step that skipped it."""
    rng = torch.Generator().manual_seed(5)
    vocab = family_model.config.vocab_size
    prefix, q = torch.randint(100, vocab, (7,), generator=rng).tolist(), [5, 901, 77, 4021, 13, 260]
    passages = [torch.randint(100, vocab, (n,), generator=rng).tolist() for n in (11, 6)]
    ref = greedy_logits(family_model, prefix + passages[0] + passages[1] + q)[-1]
    got = _fast_logits(family_model, family_model, (prefix, passages), q)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    if arch_for(family_model).qk_norm:
        skipped = copy.deepcopy(family_model)
        for layer in skipped.model.layers:
            layer.self_attn.k_norm = torch.nn.Identity()
        off = _fast_logits(skipped, family_model, (prefix, passages), q)
        assert (off - ref).abs().max() > 100 * (got - ref).abs().max() + 1e-2


def test_chunk_keys_differ_across_families(tokenizer):
    """Same tokenizer, same passage: a chunk of one family is never served to another."""
    keys = {
        name: ChunkEncoder(make(len(tokenizer), seed=2), tokenizer).key(tokenizer.encode(PASSAGES[0]))
        for name, make in TINY_FAMILIES.items()
    }
    for (a, ka), (b, kb) in itertools.combinations(keys.items(), 2):
        assert ka.digest != kb.digest and ka.model != kb.model, (a, b)


@pytest.mark.parametrize("recompute", [0.3, 1.0])
def test_blend_on_the_fast_engine_matches_the_eager_path(family_model, tokenizer, recompute):
    """Blend's check pass and partial forward run through each family's own layers (QK-norm,
    Gemma 3's local windows by logical position); recomputing every token is a full prefill of
    the prompt."""
    gen = Generator.from_model(family_model, tokenizer, max_new_tokens=6)
    spec = {"name": "blend", "recompute": recompute}
    eager = KVAnswerer.from_generator(gen, assembly=spec)
    fast = FastKVAnswerer.from_generator(gen, assembly=spec, capacity=512, max_question=64)
    for passages in (PASSAGES, PASSAGES[::-1]):
        want = eager.answer(QUESTION, passages).token_ids
        assert fast.answer(QUESTION, passages).token_ids == want and len(want) > 0
        if recompute == 1.0:
            assert want == gen.generate(QUESTION, passages).token_ids


@pytest.mark.parametrize("presses", PRESSES)
def test_fast_answers_match_the_eager_path(family_model, tokenizer, presses):
    gen = Generator.from_model(family_model, tokenizer, max_new_tokens=10)
    assert_fast_matches_eager(
        KVAnswerer.from_generator(gen, presses=presses),
        FastKVAnswerer.from_generator(gen, presses=presses, capacity=512, max_question=64),
    )
