"""``blend``'s own attention (question probe, grouped partial forward) against plain references:
the probe's scores against queries rebuilt from the hidden states with a full softmax per head,
the partial forward against the model's own attention under a (k, slots) mask (one per layer type
where local sliding-window layers see only their window); fp32 tiny Llama, Qwen2 and Gemma 3. The
switch of attention implementation is undone afterwards."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.assemble import assemble, concat_starts
from ragcompress.kv.assembly import blend_attention, flash_packed
from ragcompress.kv.assembly.blend_question import question_attention
from ragcompress.kv.assembly.recompute import ScatterLayer, recompute_slots, slot_map
from ragcompress.kv.context import prepare_context
from ragcompress.kv.encode.encoder import prefix_kv
from ragcompress.models.arch import arch_for
from ragcompress.models.compat import cache_kwargs
from ragcompress.models.rope import Rotary, rotate_by

from ..conftest import PASSAGES, QUESTION
from .test_assembly_modes import answerer


def _setup(reader, tokenizer):
    kv = answerer(reader, tokenizer, {"name": "blend", "recompute": 0.3})
    gen = kv.generator
    chunks, _ = kv.cache.get_or_encode(PASSAGES)
    prefix = prefix_kv(gen.lm, gen.layout)
    return gen, prefix, chunks, gen.layout.question_ids(QUESTION)


def layer_masks(model, key_pos, query_pos, visible):
    """``attention_mask`` for a forward: additive (1, 1, q, k) from ``visible`` (q, k) bool, and
    for a family with local layers a dict adding the window by logical position."""
    neg = torch.finfo(torch.float32).min
    full = torch.where(visible, 0.0, neg)[None, None]
    window = arch_for(model).local_window
    if window is None:
        return full
    near = visible & (query_pos[:, None] - key_pos[None, :] < window)
    return {"full_attention": full, "sliding_attention": torch.where(near, 0.0, neg)[None, None]}


def reference_scores(model, cache, question, position, positions, voters=None):
    """The probe as first written: hidden states out of the forward, queries rebuilt and rotated
    per layer, every head's softmax over the repeated keys (windowed at local layers by the
    slots' logical ``positions``); only the last ``voters`` question tokens' weights count."""
    arch = arch_for(model)
    dev, n, slots = model.device, len(question), cache.get_seq_length()
    pos = torch.arange(position, position + n, device=dev)[None]
    keys_pos = torch.cat([positions, pos[0]])
    own = torch.ones(n, n, dtype=torch.bool).tril()
    visible = torch.cat([torch.ones(n, slots, dtype=torch.bool), own], 1)
    out = model(
        input_ids=torch.tensor([list(question)], device=dev),
        position_ids=pos,
        attention_mask=layer_masks(model, keys_pos, pos[0], visible),
        cache_position=torch.arange(slots, slots + n, device=dev),
        use_cache=True,
        output_hidden_states=True,
        **cache_kwargs(model, cache),
    )
    total = torch.zeros(slots)
    for li, layer in enumerate(arch.layers(model)):
        cos, sin = Rotary.of(arch.rope_for(li)).cos_sin(pos[0])
        q = rotate_by(arch.queries(layer, out.hidden_states[li]), cos, sin)
        keys = cache.layers[li].keys[0].repeat_interleave(arch.group_size, dim=0)  # context + question
        logits = (q.float() @ keys.float().transpose(1, 2)) * arch.attention_scale
        seen = visible
        if arch.sliding_window[li] is not None:
            seen = visible & (pos[0][:, None] - keys_pos[None, :] < arch.sliding_window[li])
        logits = logits.masked_fill(~seen, float("-inf"))
        first = 0 if voters is None else max(0, n - voters)
        total += logits.softmax(dim=-1)[:, first:, :slots].amax(dim=(0, 1))
    return total / arch.num_layers


@pytest.mark.parametrize("voters", [None, 1, 3, 1000], ids=["all", "last", "last3", "more-than-n"])
def test_probe_scores_match_a_full_softmax_per_head(reader, tokenizer, voters):
    gen, prefix, chunks, question = _setup(reader, tokenizer)
    model, arch = gen.lm, arch_for(gen.lm)
    attn_impl = model.config._attn_implementation
    with torch.inference_mode():
        cache, position = assemble(prefix, chunks, arch, model.config)
        slots = cache.get_seq_length()
        before = [layer.keys.clone() for layer in cache.layers]
        starts = concat_starts(prefix.length, chunks)
        positions = slot_map(prefix.length, chunks, starts, model.device).positions
        got = question_attention(model, cache, question, position, positions, voters)
        assert cache.get_seq_length() == slots  # the question's K/V are gone again
        assert all(torch.equal(a, layer.keys) for a, layer in zip(before, cache.layers, strict=True))
        want = reference_scores(
            model, assemble(prefix, chunks, arch, model.config)[0], question, position, positions, voters
        )
    assert model.config._attn_implementation == attn_impl
    assert got.shape == (slots,) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("min_block", [256, 3], ids=["one-block", "blocks"])
def test_partial_forward_matches_the_models_own_attention(reader, tokenizer, min_block, monkeypatch):
    # with a small minimum the recomputed tokens run in several blocks, each reading only the
    # cache prefix it can see
    monkeypatch.setattr(blend_attention, "MIN_BLOCK_TOKENS", min_block)
    monkeypatch.setattr(blend_attention, "SPLIT_FROM", 0)
    gen, prefix, chunks, _ = _setup(reader, tokenizer)
    model, arch = gen.lm, arch_for(gen.lm)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        got, _ = assemble(prefix, chunks, arch, model.config)
        slots = slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), model.device)
        pick = torch.randperm(slots.candidates.numel(), generator=g)[: slots.candidates.numel() // 3]
        chosen = slots.candidates[pick].sort().values
        if min_block < 256:
            blocks = blend_attention.packed_blocks(slots.positions, chosen, arch.group_size, torch.float32)
            assert len(blocks) > 1 and blocks[0].end < blocks[-1].end
        recompute_slots(model, got, slots, chosen)

        want, _ = assemble(prefix, chunks, arch, model.config)
        layers = [ScatterLayer.of(layer) for layer in want.layers]
        want.layers = layers
        pos = slots.positions[chosen]
        visible = slots.positions[None, :] <= pos[:, None]
        for layer in layers:
            layer.slots = chosen
        model(
            input_ids=slots.tokens[chosen][None],
            position_ids=pos[None],
            attention_mask=layer_masks(model, slots.positions, pos, visible),
            cache_position=chosen,
            use_cache=True,
            **cache_kwargs(model, want),
        )
    for a, b in zip(got.layers, want.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    changed = (
        got.layers[-1].values - assemble(prefix, chunks, arch, model.config)[0].layers[-1].values
    ).abs()
    assert changed[0, :, chosen].amax() > 1e-4  # the chosen slots were really recomputed


def test_blend_choice_is_deterministic(reader, tokenizer):
    gen, _, chunks, question = _setup(reader, tokenizer)
    runs = [
        prepare_context(gen.lm, gen.layout, chunks, question, {"name": "blend", "recompute": 0.3})
        for _ in "ab"
    ]
    for a, b in zip(runs[0].cache.layers, runs[1].cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["flash-kernel", "sdpa-blocks"])
def test_gpu_bf16_partial_forward(monkeypatch, attention):
    """bf16 on CUDA: the recomputed tokens through the position-masked flash kernel (what a GPU
    runs), or in several SDPA blocks on side streams (masks cut to each block's prefix, what
    runs without Triton), give the model's own attention's K/V."""
    from transformers import DynamicCache

    from ragcompress.kv.assembly.recompute import SlotMap
    from tests.support.tiny import make_tiny_llama

    monkeypatch.setattr(blend_attention, "MIN_BLOCK_TOKENS", 64)
    monkeypatch.setattr(blend_attention, "SPLIT_FROM", 0)
    if attention == "sdpa-blocks":
        monkeypatch.setattr(flash_packed, "flash_kernel", lambda device: None)
    model = make_tiny_llama(512, num_key_value_heads=2, num_attention_heads=8, hidden_size=256)
    model = model.to("cuda", torch.bfloat16)
    cfg, n_slots = model.config, 3000
    g = torch.Generator(device="cuda").manual_seed(0)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    shape = (1, cfg.num_key_value_heads, n_slots, head_dim)

    def cache():
        return DynamicCache(
            ddp_cache_data=[
                tuple(torch.randn(shape, generator=g, device="cuda").bfloat16() for _ in "kv")
                for _ in range(cfg.num_hidden_layers)
            ],
            config=cfg,
        )

    positions = torch.arange(n_slots, device="cuda")
    tokens = torch.randint(0, 512, (n_slots,), device="cuda", generator=g)
    slots = SlotMap(positions, tokens, positions[100:], n_slots - 100)
    chosen = (torch.randperm(n_slots - 100, device="cuda", generator=g)[:700] + 100).sort().values
    assert len(blend_attention.packed_blocks(positions, chosen, 4, torch.bfloat16)) == 8
    got = cache()
    want = DynamicCache(
        ddp_cache_data=[(k.clone(), v.clone()) for k, v in ((x.keys, x.values) for x in got.layers)],
        config=cfg,
    )
    job = flash_packed.packed_job(model, positions, chosen, torch.bfloat16)
    assert type(job).__name__ == ("FlashPacked" if attention == "flash-kernel" else "Packed")
    with torch.inference_mode():
        recompute_slots(model, got, slots, chosen)
        layers = [ScatterLayer.of(layer) for layer in want.layers]
        want.layers = layers
        pos = positions[chosen]
        mask = torch.where(positions[None, :] <= pos[:, None], 0.0, torch.finfo(torch.bfloat16).min)
        for layer in layers:
            layer.slots = chosen
        model(
            input_ids=tokens[chosen][None],
            position_ids=pos[None],
            attention_mask=mask.bfloat16()[None, None],
            cache_position=chosen,
            use_cache=True,
            **cache_kwargs(model, want),
        )
        torch.cuda.synchronize()
    for a, b in zip(got.layers, want.layers, strict=True):
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            x, y = x[:, :, chosen].float(), y[:, :, chosen].float()
            assert ((x - y).norm() / y.norm()) < 1e-2


def test_blend_runs_on_a_view_and_never_switches_the_model(reader, tokenizer):
    gen, _, _, _ = _setup(reader, tokenizer)
    model = gen.lm
    original = model.config._attn_implementation
    job = blend_attention.Probe(model.config, 4, torch.zeros(4))
    with blend_attention.blend_attention(model, job) as runner:
        # another request using the model meanwhile sees its own attention, untouched
        assert model.config._attn_implementation == original
        assert runner is not model and runner.config._attn_implementation == blend_attention.NAME
        assert runner.model.embed_tokens.weight is model.model.embed_tokens.weight  # same tensors
    assert model.config._attn_implementation == original
