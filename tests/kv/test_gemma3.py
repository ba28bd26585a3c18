"""Gemma 3 on the eager KV path: local sliding-window layers (window 6, shorter than every
passage) interleaved with a global layer, each with its own RoPE base.

The KV path's definition (docs/design.md, "Local sliding-window layers"): every chunk is encoded
alone after the shared prefix and keeps every token; the question sees every context slot at a
global layer and, at a local layer, the slots fewer than ``window`` logical positions back. The
references below build that with transformers alone (``ape``: one masked forward; ``concat``:
per-passage prefills moved by the model's own rotary module), so several assembled chunks are
checked without going through the code under test.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.assembly import Context
from ragcompress.kv.context import prepare_context
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.fingerprint import model_fingerprint
from ragcompress.models.arch import UnsupportedModelError, arch_for
from ragcompress.models.compat import cache_kwargs
from ragcompress.types import Passage
from tests.support.tiny import make_tiny_gemma3, make_tiny_llama

from .conftest import PASSAGES, QUESTION

WINDOW = 6


@pytest.fixture(scope="module")
def gemma(tokenizer):
    return make_tiny_gemma3(len(tokenizer), seed=4)


@pytest.fixture(scope="module")
def gen(gemma, tokenizer):
    return Generator.from_model(gemma, tokenizer, max_new_tokens=6)


def _masks(qpos: torch.Tensor, kpos: torch.Tensor, visible: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two layer types' additive masks: ``visible`` (q, k) at global layers, and only keys
    fewer than WINDOW logical positions back at local ones."""
    neg = torch.finfo(torch.float32).min
    local = visible & (qpos[:, None] - kpos[None, :] < WINDOW)
    return {
        "full_attention": torch.where(visible, 0.0, neg)[None, None],
        "sliding_attention": torch.where(local, 0.0, neg)[None, None],
    }


def ape_reference(model: Any, layout: Any, texts: list[str], question: str) -> torch.Tensor:
    """(question tokens, vocab) under ``ape``: one forward of prefix + passages + question, every
    passage at the positions right after the prefix (where it is encoded) seeing only the prefix
    and itself, the question after the longest passage seeing everything."""
    prefix, q = layout.prefix_ids(), layout.question_ids(question)
    ids, pos, group = list(prefix), list(range(len(prefix))), [-1] * len(prefix)
    for j, text in enumerate(texts):
        seg = layout.passage_ids(text)
        ids += seg
        pos += range(len(prefix), len(prefix) + len(seg))
        group += [j] * len(seg)
    start = max(pos) + 1
    ids += q
    pos += range(start, start + len(q))
    group += [-2] * len(q)
    p, g = torch.tensor(pos), torch.tensor(group)
    causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    sees = (g[None, :] == -1) | (g[:, None] == -2) | (g[None, :] == g[:, None])
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([ids]), position_ids=p[None], attention_mask=_masks(p, p, causal & sees)
        )
    return out.logits[0, -len(q) :]


def concat_reference(model: Any, layout: Any, texts: list[str], question: str) -> torch.Tensor:
    """(question tokens, vocab) under ``concat``, built with transformers alone: each passage
    prefilled after the prefix (a plain cache: every token of every layer), its keys moved to
    their place one after the other with the model's own rotary module per layer type, the
    question prefilled over them with the window applied by position."""
    from transformers import DynamicCache
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

    prefix, q = layout.prefix_ids(), layout.question_ids(question)
    plen, types = len(prefix), model.config.layer_types
    layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in types]
    start = plen
    for j, text in enumerate(texts):
        seg = layout.passage_ids(text)
        cache = DynamicCache()
        with torch.inference_mode():
            model(input_ids=torch.tensor([prefix + seg]), use_cache=True, **cache_kwargs(model, cache))
        layer: Any
        for li, layer in enumerate(cache.layers):
            k, v = layer.keys[:, :, plen:], layer.values[:, :, plen:]
            delta = torch.full((1, len(seg)), start - plen)
            cos, sin = model.model.rotary_emb(k, delta, types[li])
            if j == 0:
                layers[li].append((layer.keys[:, :, :plen], layer.values[:, :, :plen]))
            layers[li].append((apply_rotary_pos_emb(k, k, cos, sin)[0], v))
        start += len(seg)
    ctx = DynamicCache(
        ddp_cache_data=[tuple(torch.cat(t, dim=2) for t in zip(*kv, strict=True)) for kv in layers]
    )
    qpos, kpos = torch.arange(start, start + len(q)), torch.arange(start + len(q))
    visible = kpos[None, :] <= qpos[:, None]
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([q]),
            position_ids=qpos[None],
            cache_position=qpos,
            attention_mask=_masks(qpos, kpos, visible),
            **cache_kwargs(model, ctx),
        )
    return out.logits[0]


def context_logits(model: Any, ctx: Context, q: list[int]) -> torch.Tensor:
    """(len(q), vocab): the question prefilled after an assembled context, as the answer path does."""
    phys = ctx.cache.get_seq_length()
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([q]),
            position_ids=torch.arange(ctx.position, ctx.position + len(q))[None],
            cache_position=torch.arange(phys, phys + len(q)),
            **cache_kwargs(model, ctx.cache),
            **ctx.step_kwargs(phys, len(q)),
        )
    return out.logits[0]


def test_adapter_states_what_the_model_does(gemma):
    arch, rot = arch_for(gemma), gemma.model.rotary_emb
    assert arch.family == "gemma3" and arch.num_layers == 3 and arch.local_window == WINDOW
    assert arch.sliding_window == (WINDOW, None, WINDOW)
    assert torch.equal(arch.rope_for(0).inv_freq(), rot.sliding_attention_inv_freq)
    assert torch.equal(arch.rope_for(1).inv_freq(), rot.full_attention_inv_freq)
    assert not torch.equal(arch.rope_for(0).inv_freq(), arch.rope_for(1).inv_freq())
    layers = arch.layers(gemma)
    assert arch.attention_scale == pytest.approx(arch.attention(layers[0]).scaling)
    assert arch.attention_scale != pytest.approx(arch.head_dim**-0.5)
    assert arch.embed_scale == pytest.approx(float(arch.module(gemma, "embed").embed_scale))
    assert arch.qk_norm and arch.norm_placement == "sandwich" and arch.final_softcap == 30.0
    for step in arch.block_order:
        if step.endswith("norm"):
            assert hasattr(layers[0], getattr(arch.names, step)), step
    assert arch.fast_engine


def test_a_cast_models_rounded_tables_are_read_per_layer_type(tokenizer):
    model = make_tiny_gemma3(len(tokenizer), seed=4).to(torch.bfloat16)
    arch, rot = arch_for(model), model.model.rotary_emb
    for li, kind in enumerate(model.config.layer_types):
        assert torch.equal(arch.rope_for(li).inv_freq(), getattr(rot, f"{kind}_inv_freq").float())
    assert not torch.equal(arch.rope_for(1).inv_freq(), arch_for(model.config).rope_for(1).inv_freq())
    model.float()  # the buffers are replaced: read again (still the rounded values, as the model has)
    assert arch_for(model) is not arch


def test_local_layers_keep_every_token_and_match_a_fresh_encoding(gemma, gen):
    enc = ChunkEncoder.from_generator(gen)
    layout: Any = enc.layout
    chunk = enc.encode(PASSAGES[:1])[0]
    ids = layout.prefix_ids() + layout.passage_ids(PASSAGES[0])
    assert chunk.length > WINDOW and chunk.base_offset > WINDOW
    with torch.inference_mode():
        fresh = gemma(input_ids=torch.tensor([ids]), use_cache=True)
    plen = chunk.base_offset
    for li, layer in enumerate(chunk.layers):
        k, v, pos = layer.dense()
        assert k.shape[1] == chunk.length  # local layers too: nothing dropped at encoding
        assert torch.equal(pos[0], torch.arange(plen, plen + chunk.length))
        ref = fresh.past_key_values.layers[li]
        # transformers' own sliding layer keeps only the last window - 1 tokens of a local layer
        tail = min(ref.keys.shape[2], chunk.length)
        torch.testing.assert_close(k[:, -tail:], ref.keys[0, :, -tail:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v[:, -tail:], ref.values[0, :, -tail:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["concat", "ape"])
def test_several_chunks_match_the_definition(gemma, gen, mode):
    enc = ChunkEncoder.from_generator(gen)
    layout: Any = enc.layout
    q = layout.question_ids(QUESTION)
    chunks = enc.encode(PASSAGES)
    reference = ape_reference if mode == "ape" else concat_reference
    ref = reference(gemma, layout, PASSAGES, QUESTION)
    ctx = prepare_context(gemma, layout, chunks, q, mode)
    assert ctx.window == WINDOW
    torch.testing.assert_close(context_logits(gemma, ctx, q), ref, atol=2e-4, rtol=2e-4)
    # The window matters here: without it the local layers would see the whole context.
    wide = prepare_context(gemma, layout, chunks, q, mode)
    wide.window = 10**9
    assert not torch.allclose(context_logits(gemma, wide, q), ref, atol=1e-2)
    if mode == "ape":  # transformers' own window counts slots; parallel chunks make them differ
        by_slot = prepare_context(gemma, layout, chunks, q, mode)
        by_slot.window = None
        assert not torch.allclose(context_logits(gemma, by_slot, q), ref, atol=1e-2)


def test_decoding_over_chunks_keeps_the_window(gemma, gen):
    """Greedy decoding from one chunk equals the text path's (a fresh prefill and decode by
    transformers' own sliding layers) for every answer token, not only the first."""
    kv = KVAnswerer.from_generator(gen)
    for text in PASSAGES:
        want = gen.generate(QUESTION, [text]).token_ids
        assert kv.answer(QUESTION, [text]).token_ids == want and len(want) > 1


def test_window_mask_follows_logical_positions():
    """Slots hidden at a local layer are those WINDOW or more positions back, whatever their slot
    index (a chunk moved later, evicted tokens leaving gaps)."""
    keys = torch.zeros(1, 2, 5, 4)
    cache: Any = type("C", (), {"layers": [type("L", (), {"keys": keys})()]})()
    positions = torch.tensor([0, 1, 9, 12, 13])  # prefix 0-1, then kept tokens with gaps
    ctx = Context(cache, position=15, slots=5, window=WINDOW, positions=positions)
    masks = ctx.step_kwargs(5, 2)["attention_mask"]
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert (masks["full_attention"][0, 0] == 0).sum(dim=1).tolist() == [6, 7]
    visible = masks["sliding_attention"][0, 0] == 0  # queries at positions 15, 16
    assert visible.tolist() == [
        [False, False, False, True, True, True, False],
        [False, False, False, True, True, True, True],
    ]


@pytest.mark.parametrize(
    "press",
    [
        {"name": "knorm", "ratio": 0.0},
        {"name": "knorm", "ratio": 0.4},
        {"name": "window", "ratio": 0.5, "sinks": 2},
        {"name": "observed", "ratio": 0.4},
        {"name": "kvzip", "ratio": 0.4},
        {"name": "quantize", "bits": 8, "group_size": 16},
    ],
    ids=lambda p: f"{p['name']}-{p.get('ratio', p.get('bits'))}",
)
def test_presses_keep_their_contract_on_gemma3(gemma, gen, press):
    enc = ChunkEncoder.from_generator(gen)
    layout: Any = enc.layout
    chunks = enc.encode(PASSAGES, presses=[press])
    plain = enc.encode(PASSAGES)
    ratio = float(press.get("ratio", 0.0))
    for c, ref in zip(chunks, plain, strict=True):
        counts = {layer.num_tokens for layer in c.layers}
        assert counts == {c.length - int(ratio * c.length)} or counts == {round(c.length * (1 - ratio))}
        for layer in c.layers:
            pos = layer.dense()[2]
            assert int(pos.min()) >= c.base_offset and int(pos.max()) < c.base_offset + c.length
        assert c.key != ref.key  # the press is in the key
    q = layout.question_ids(QUESTION)
    got = context_logits(gemma, prepare_context(gemma, layout, chunks, q), q)
    want = context_logits(gemma, prepare_context(gemma, layout, plain, q), q)
    assert torch.isfinite(got).all()
    if ratio == 0.0 and press["name"] == "knorm":
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if press["name"] == "quantize":
        assert (got.softmax(-1) - want.softmax(-1)).abs().max() < 0.05


@pytest.mark.parametrize(
    "spec", [{"name": "blend", "recompute": 0.3}, {"name": "blend_question", "recompute": 0.3}]
)
def test_selective_recompute_runs_gemma3_on_both_engines(gen, spec):
    """The blend modes build for Gemma 3 and the fast engine (reference kernels off CUDA) answers
    as the eager path does; the windowed tests of the modes themselves are in
    ``tests/kv/assembly`` (Gemma 3 is one of their readers)."""
    from ragcompress.kv.fast import FusedStep

    from .assembly.test_fast_modes import check_same_tokens

    check_same_tokens(gen, spec, capacity=256)
    # off CUDA the only reason the fused step gives is the device (sandwich norms are none)
    assert FusedStep.unsupported(gen.lm) == "the model is not on a CUDA device"


def test_low_rank_calibration_fits_gemma3_after_rope_and_refuses_before(gemma, tokenizer):
    from ragcompress.kv.encode.calibrate import calibrate

    with pytest.raises(UnsupportedModelError, match="gemma3 has several"):
        calibrate(gemma, tokenizer, PASSAGES, rank=4)  # one table per basis: local and global differ
    basis = calibrate(gemma, tokenizer, PASSAGES, rank=4, pre_rope=False)
    assert basis.layers == 3 and basis.inv_freq is None


def test_chunk_key_covers_the_window_and_the_family(tokenizer, gemma):
    other = make_tiny_gemma3(len(tokenizer), seed=4, sliding_window=WINDOW + 1)
    assert torch.equal(
        other.model.layers[0].self_attn.q_proj.weight, gemma.model.layers[0].self_attn.q_proj.weight
    )
    llama = make_tiny_llama(len(tokenizer), seed=4)
    ids = ChunkEncoder(gemma, tokenizer).passage_ids(Passage(PASSAGES[0]))
    keys = {ChunkEncoder(m, tokenizer).key(ids) for m in (gemma, other, llama)}
    assert len(keys) == 3  # same tokens, same tokenizer: the model (config included) tells them apart
    assert model_fingerprint(gemma) != model_fingerprint(other)


def test_multimodal_gemma3_config_is_refused_naming_the_text_family():
    from transformers import Gemma3Config

    with pytest.raises(UnsupportedModelError, match="gemma3"):
        arch_for(Gemma3Config())


def test_a_config_soft_cap_on_attention_is_what_the_model_ignores(tokenizer):
    """transformers' Gemma 3 attention never applies ``attn_logit_softcapping`` (a Gemma 2 field a
    config may still carry): the adapter says so, and every KV path follows the model, a full
    recompute reproducing its full prefill and the fast engine its eager answers."""
    from .assembly.test_assembly_modes import TARGETS, answerer, full_logprobs
    from .assembly.test_fast_modes import check_same_tokens

    capped = make_tiny_gemma3(len(tokenizer), seed=4, attn_logit_softcapping=2.0)
    assert arch_for(capped).attn_softcap is None
    full = answerer(capped, tokenizer, {"name": "blend", "recompute": 1.0})
    torch.testing.assert_close(
        full.teacher_forced_logprobs(QUESTION, PASSAGES, TARGETS),
        full_logprobs(full, PASSAGES, TARGETS),
        atol=1e-4,
        rtol=1e-4,
    )
    check_same_tokens(
        Generator.from_model(capped, tokenizer, max_new_tokens=6), {"name": "concat"}, capacity=256
    )
