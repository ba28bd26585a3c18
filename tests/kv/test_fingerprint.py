"""The model fingerprint is an exact hash of the weights, recomputed only when they change:
in-place changes and casts give other keys (a miss and a re-encode, never an old chunk), an
unchanged model is not rehashed, and the shared-prefix KV follows the weights."""

from __future__ import annotations

import copy

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv import fingerprint
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.encode.encoder import prefix_kv
from ragcompress.kv.fingerprint import forget_fingerprint, model_fingerprint
from ragcompress.kv.key import model_fingerprint as reexported
from tests.support.tiny import make_tiny_llama

from .conftest import PASSAGES, QUESTION


@pytest.fixture()
def model(tokenizer):
    return make_tiny_llama(len(tokenizer), seed=3)


@pytest.fixture()
def hashes(monkeypatch) -> list[str]:
    """Every full hash computed during the test."""
    done: list[str] = []
    real = fingerprint._full_hash

    def counting(m):
        done.append(real(m))
        return done[-1]

    monkeypatch.setattr(fingerprint, "_full_hash", counting)
    return done


def answerer(model, tokenizer) -> KVAnswerer:
    return KVAnswerer.from_generator(Generator.from_model(model, tokenizer, max_new_tokens=6))


def test_key_module_reexports_the_fingerprint() -> None:
    assert reexported is model_fingerprint


def test_unchanged_model_is_hashed_once(model, hashes) -> None:
    first = model_fingerprint(model)
    for _ in range(5):
        assert model_fingerprint(model) == first
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3]]))  # a forward changes no weight
    assert model_fingerprint(model) == first
    assert len(hashes) == 1


def test_equal_weights_give_equal_fingerprints(model, tokenizer) -> None:
    twin = make_tiny_llama(len(tokenizer), seed=3)  # another object, the same bytes
    assert model_fingerprint(twin) == model_fingerprint(model)
    other = make_tiny_llama(len(tokenizer), seed=4)
    assert model_fingerprint(other) != model_fingerprint(model)


def test_one_changed_element_anywhere_changes_it(model, hashes) -> None:
    before = model_fingerprint(model)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb[1, 3] += 1e-3  # a single element no strided sample of the tensor would visit
    after = model_fingerprint(model)
    assert after != before
    assert len(hashes) == 2


def test_in_place_dtype_cast_changes_it_and_casting_back_restores_it(model) -> None:
    before = model_fingerprint(model)
    model.to(torch.float64)
    assert model_fingerprint(model) != before
    model.to(torch.float32)  # fp32 → fp64 → fp32 is exact: the same bytes again
    assert model_fingerprint(model) == before
    model.to(torch.bfloat16)
    assert model_fingerprint(model) != before


def test_optimizer_step_changes_it(model) -> None:
    before = model_fingerprint(model)
    param = model.get_output_embeddings().weight
    param.requires_grad_(True)
    param.grad = torch.ones_like(param)
    torch.optim.SGD([param], lr=1e-3).step()
    assert model_fingerprint(model) != before


def test_replaced_tensor_changes_it(model) -> None:
    before = model_fingerprint(model)
    layer = model.model.layers[0].self_attn.q_proj
    layer.weight = torch.nn.Parameter(layer.weight.detach() * 2, requires_grad=False)  # what adapters do
    assert model_fingerprint(model) != before


def test_writes_through_data_need_forget(model) -> None:
    """``param.data`` has its own version counter: writes through it are invisible to the
    version token (as documented); forget_fingerprint makes the next use rehash."""
    before = model_fingerprint(model)
    model.lm_head.weight.data.mul_(2)
    assert model_fingerprint(model) == before
    forget_fingerprint(model)
    assert model_fingerprint(model) != before


def test_prefix_kv_follows_the_weights(model, tokenizer) -> None:
    layout = Generator.from_model(model, tokenizer).layout
    first = prefix_kv(model, layout)
    assert prefix_kv(model, layout) is first  # kept while the weights stay
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight.mul_(1.5)
    second = prefix_kv(model, layout)
    assert second is not first
    assert second.model == model_fingerprint(model) != first.model
    assert not torch.equal(second.keys[1], first.keys[1])


def test_answer_after_in_place_change_equals_a_fresh_answerer(model, tokenizer) -> None:
    ans = answerer(model, tokenizer)
    before = ans.answer(QUESTION, PASSAGES)
    assert before.stats.extra["chunks_encoded"] == len(PASSAGES)
    assert ans.answer(QUESTION, PASSAGES).stats.extra["chunks_hit"] == len(PASSAGES)
    with torch.no_grad():
        for p in model.model.layers[0].parameters():
            p.mul_(1.25)
    after = ans.answer(QUESTION, PASSAGES)
    # the chunks of the old weights are still in the store: they must miss
    assert after.stats.extra["chunks_hit"] == 0
    assert after.stats.extra["chunks_encoded"] == len(PASSAGES)
    fresh = answerer(copy.deepcopy(model), tokenizer).answer(QUESTION, PASSAGES)
    assert after.token_ids == fresh.token_ids
    assert ans.answer(QUESTION, PASSAGES).stats.extra["chunks_hit"] == len(PASSAGES)


def test_in_place_cast_misses_and_answers_like_a_fresh_model(model, tokenizer) -> None:
    ans = answerer(model, tokenizer)
    ans.answer(QUESTION, PASSAGES)
    model.to(torch.float64)
    after = ans.answer(QUESTION, PASSAGES)
    assert after.stats.extra["chunks_hit"] == 0
    fresh = answerer(copy.deepcopy(model), tokenizer).answer(QUESTION, PASSAGES)
    assert after.token_ids == fresh.token_ids


def test_fast_answerer_repacks_the_prefix_after_an_in_place_change(model, tokenizer) -> None:
    from ragcompress.kv.fast.answer import FastKVAnswerer

    def fast(m) -> FastKVAnswerer:
        gen = Generator.from_model(m, tokenizer, max_new_tokens=6)
        return FastKVAnswerer.from_generator(gen, capacity=512, max_question=64)

    ans = fast(model)
    ans.answer(QUESTION, PASSAGES)
    with torch.no_grad():
        for p in model.model.layers[0].parameters():
            p.mul_(1.25)
    after = ans.answer(QUESTION, PASSAGES)
    assert after.stats.extra["chunks_hit"] == 0
    assert after.token_ids == fast(copy.deepcopy(model)).answer(QUESTION, PASSAGES).token_ids


def test_replaced_module_changes_it_and_the_eager_view_follows(model) -> None:
    from ragcompress.kv.encode.eager import eager_view

    before, view = model_fingerprint(model), eager_view(model)
    mlp = model.model.layers[0].mlp
    new = torch.nn.Linear(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
    mlp.down_proj = new.requires_grad_(False)  # what adapter injection does
    assert model_fingerprint(model) != before
    rebuilt = eager_view(model)
    assert rebuilt is not view
    assert rebuilt.model.layers[0].mlp.down_proj.weight is new.weight
