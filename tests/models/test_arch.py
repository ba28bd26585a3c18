"""Model-family adapters: each declared family's facts match what its transformers model does,
and a family or config the KV path cannot run fails when an encoder is built, naming the
supported families."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.models import supported_families
from ragcompress.models.arch import ModelArch, RopeSpec, UnsupportedModelError, arch_for
from ragcompress.models.rope import Rotary, rerotate, rotate
from tests.support.tiny import (
    TINY_FAMILIES,
    make_tiny_llama,
    make_tiny_mistral,
    make_tiny_qwen2,
    make_tiny_qwen3,
)

LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}


MODELS = {
    "llama": lambda v: make_tiny_llama(v, seed=3),
    "llama-linear": lambda v: make_tiny_llama(
        v, seed=3, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    ),
    "llama-llama3": lambda v: make_tiny_llama(v, seed=3, rope_parameters=LLAMA3),
    "llama-bias": lambda v: make_tiny_llama(v, seed=3, attention_bias=True),
    "qwen2": lambda v: make_tiny_qwen2(v, seed=3),
    "mistral": lambda v: make_tiny_mistral(v, seed=3),
    "qwen3": lambda v: make_tiny_qwen3(v, seed=3),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request, tokenizer):
    return MODELS[request.param](len(tokenizer))


def test_supported_families_lists_the_declared_ones():
    assert {"llama", "mistral", "qwen2", "qwen3"} <= set(supported_families())
    assert set(TINY_FAMILIES) <= set(supported_families())  # every tested family is declared
    assert supported_families() == sorted(supported_families())


def test_families_name_their_model_types():
    from ragcompress.models.arch import supported_model_types

    types = supported_model_types()
    assert "gemma3" in supported_families() and types["gemma3_text"] == "gemma3"
    assert set(types.values()) == set(supported_families())
    assert all(types[f] == f for f in ("llama", "mistral", "qwen2", "qwen3"))


def test_facts_match_the_model(model):
    arch = arch_for(model)
    cfg = model.config
    assert arch.family == cfg.model_type
    assert (arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (2, 4, 2, 16)
    assert arch.group_size == 2 and arch.hidden_size == 64
    assert arch.qkv_bias == (model.model.layers[0].self_attn.k_proj.bias is not None)
    assert arch.qk_norm == hasattr(model.model.layers[0].self_attn, "q_norm")
    assert arch.norm_placement == "pre" and arch.mlp_act == cfg.hidden_act
    assert list(arch.layers(model)) == list(model.model.layers)
    layer = model.model.layers[1]
    parts = arch.parts(layer)
    assert (parts.input_norm, parts.post_attention_norm) == (
        layer.input_layernorm,
        layer.post_attention_layernorm,
    )
    assert (parts.q_proj, parts.o_proj, parts.mlp) == (
        layer.self_attn.q_proj,
        layer.self_attn.o_proj,
        layer.mlp,
    )
    assert (parts.gate_proj, parts.down_proj) == (layer.mlp.gate_proj, layer.mlp.down_proj)
    assert parts.k_norm is (layer.self_attn.k_norm if arch.qk_norm else None)
    assert arch.attention(model.model.layers[1]) is model.model.layers[1].self_attn
    assert arch.module(model, "final_norm") is model.model.norm
    assert arch.module(model, "lm_head") is model.lm_head
    assert arch.module(model, "embed") is model.model.embed_tokens
    assert arch.max_positions == cfg.max_position_embeddings
    # The table is the model's own, bit for bit (same fp32 operations as transformers).
    for li in range(arch.num_layers):
        assert torch.equal(arch.rope_for(li).inv_freq(), model.model.rotary_emb.inv_freq)


def test_qkv_bias_per_family(tokenizer):
    v = len(tokenizer)
    assert arch_for(make_tiny_qwen2(v)).qkv_bias
    assert not arch_for(make_tiny_mistral(v)).qkv_bias
    assert not arch_for(make_tiny_llama(v)).qkv_bias
    assert arch_for(make_tiny_llama(v, attention_bias=True)).qkv_bias
    assert arch_for(make_tiny_qwen2(v)).rope_for(0).theta == 1e6
    assert not arch_for(make_tiny_qwen3(v)).qkv_bias
    assert arch_for(make_tiny_qwen3(v, attention_bias=True)).qkv_bias


def test_projections_are_the_models_pre_rope_queries_and_keys(model):
    """``project`` gives what the model's attention rotates: its cached keys are these keys
    rotated (QK-norm before RoPE for Qwen3), its queries those ``queries`` returns."""
    arch = arch_for(model)
    ids = torch.tensor([[5, 17, 99, 4, 250, 31, 8]])
    pos = torch.arange(ids.shape[1]) + 40
    with torch.inference_mode():
        out = model(input_ids=ids, position_ids=pos[None], output_hidden_states=True, use_cache=True)
        for li, layer in enumerate(arch.layers(model)):
            p = arch.parts(layer)
            q, k, _ = arch.project(p, p.input_norm(out.hidden_states[li][0]))
            inv = arch.rope_for(li).inv_freq()
            keys = out.past_key_values.layers[li].keys[0]  # (kv_heads, n, head_dim)
            torch.testing.assert_close(rotate(k.transpose(0, 1), pos, inv), keys, atol=1e-5, rtol=1e-5)
            assert torch.equal(q.transpose(0, 1), arch.queries(layer, out.hidden_states[li]))


def test_queries_rope_grouping_and_scale_reproduce_the_models_attention(model):
    """Softmax of (arch queries, rotated with the arch's table) · (cached keys of the KV head the
    arch groups them with) × the arch's scale == the weights eager attention returns."""
    from ragcompress.kv.encode.eager import eager_view

    arch = arch_for(model)
    ids = torch.tensor([[5, 17, 99, 4, 250, 31, 8]])
    n = ids.shape[1]
    pos = torch.arange(n) + 40  # not at 0, so a wrong table shows
    with torch.inference_mode():
        out = eager_view(model)(
            input_ids=ids,
            position_ids=pos[None],
            output_attentions=True,
            output_hidden_states=True,
            use_cache=True,
        )
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for li, layer in enumerate(arch.layers(model)):
        q = rotate(arch.queries(layer, out.hidden_states[li]), pos, arch.rope_for(li).inv_freq())
        keys = out.past_key_values.layers[li].keys[0].repeat_interleave(arch.group_size, dim=0)
        logits = (q @ keys.transpose(1, 2)) * arch.attention_scale
        weights = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        torch.testing.assert_close(weights, out.attentions[li][0], atol=1e-5, rtol=1e-4)


def _gpt2(vocab_size: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=1, n_head=2, n_positions=256)
    return GPT2LMHeadModel(cfg).eval()


def test_unsupported_family_fails_at_encoder_construction(tokenizer):
    with pytest.raises(UnsupportedModelError) as err:
        ChunkEncoder(_gpt2(len(tokenizer)), tokenizer)
    msg = str(err.value)
    assert "'gpt2'" in msg
    for family in supported_families():
        assert repr(family) in msg


@pytest.mark.parametrize(
    ("rope", "named"),
    [
        (
            {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 1024},
            "yarn",
        ),
        ({"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "dynamic"),
    ],
)
def test_rope_scaling_the_adapter_cannot_move_fails_at_encoder_construction(tokenizer, rope, named):
    model = make_tiny_llama(len(tokenizer), rope_parameters=rope)
    with pytest.raises(UnsupportedModelError, match=rf"llama: RoPE type '{named}' is not supported"):
        ChunkEncoder(model, tokenizer)


def test_longrope_config_fails_clearly():
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=2048,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 1e4,
            "short_factor": [1.0] * 8,
            "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 1024,
        },
    )
    with pytest.raises(UnsupportedModelError, match="longrope"):
        arch_for(cfg)


def test_sliding_window_shorter_than_the_context_is_refused():
    from transformers import MistralConfig

    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        arch_for(MistralConfig(sliding_window=1024, max_position_embeddings=8192))
    assert arch_for(MistralConfig(sliding_window=None)).family == "mistral"
    assert arch_for(MistralConfig(sliding_window=8192, max_position_embeddings=8192)).family == "mistral"


def test_qwen3_sliding_window_layers_are_refused():
    from transformers import Qwen3Config

    cfg = Qwen3Config(use_sliding_window=True, sliding_window=1024, max_window_layers=0, num_hidden_layers=2)
    with pytest.raises(UnsupportedModelError, match="qwen3: sliding-window"):
        arch_for(cfg)
    assert arch_for(Qwen3Config(num_hidden_layers=2)).qk_norm  # the released configs: no window


def test_per_layer_rope_tables_are_used_layer_by_layer(tiny_llama, tokenizer):
    """Assembly rotates each layer with its own table (the hook for families with local and
    global RoPE): give layer 1 another theta and check each layer against the reference."""
    from ragcompress.kv.assemble import assemble

    enc = ChunkEncoder(tiny_llama, tokenizer)
    chunk = enc.encode(["A short passage about rivers and seas."])[0]
    base = arch_for(tiny_llama)
    other = dataclasses.replace(base.rope[1], theta=500.0)
    arch = dataclasses.replace(base, rope=(base.rope[0], other))
    shift = 37
    cache: Any
    cache, _ = assemble(enc.prefix, [chunk], arch, starts=[enc.prefix.length + shift])
    p = enc.prefix.length
    for li, spec in enumerate(arch.rope):
        keys, _, _ = chunk.layers[li].dense()
        want = rerotate(keys, shift, Rotary.of(spec))
        torch.testing.assert_close(cache.layers[li].keys[0, :, p:], want)
    with pytest.raises(UnsupportedModelError, match="several"):
        Rotary.from_arch(arch)


def test_a_rope_spec_refuses_what_it_cannot_compute():
    with pytest.raises(UnsupportedModelError, match="yarn"):
        RopeSpec("yarn", 1e4, 16)
    with pytest.raises(UnsupportedModelError, match="even"):
        RopeSpec("default", 1e4, 15)
    with pytest.raises(UnsupportedModelError, match="group"):
        ModelArch("x", 1, 3, 2, 16, 48, (RopeSpec("default", 1e4, 16),), 0.25)


def test_unsupported_family_fails_when_an_answerer_is_built(tokenizer):
    """Eager and fast answerers refuse the model before any document is encoded or stored."""
    from ragcompress.generate import Generator
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.fast.answer import FastKVAnswerer

    gen = Generator.from_model(_gpt2(len(tokenizer)), tokenizer, max_new_tokens=2)
    for build in (KVAnswerer.from_generator, FastKVAnswerer.from_generator):
        with pytest.raises(UnsupportedModelError, match=r"'gpt2'.*supported families"):
            build(gen)


def test_a_cast_model_rotates_with_its_own_rounded_table() -> None:
    """``model.to(bf16)`` rounds the model's RoPE buffer and the model rotates with it; the arch
    (and every re-rotation built from it) takes the model's values, also after ``.float()``."""
    model = make_tiny_llama(64, seed=0)
    exact = arch_for(model).rope[0].inv_freq()
    assert torch.equal(exact, model.model.rotary_emb.inv_freq.float())
    for cast in (model.to(torch.bfloat16), model.float()):
        live = cast.model.rotary_emb.inv_freq.float()
        assert not torch.equal(live, exact)  # the cast rounded it, and .float() kept the rounding
        assert torch.equal(arch_for(cast).rope[0].inv_freq(), live)
        assert torch.equal(Rotary.from_model(cast).inv_freq, live)
