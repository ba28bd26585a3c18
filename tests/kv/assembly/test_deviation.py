"""``blend``'s selection signal: how far cached values are from a fresh prefill's at a check layer."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.assemble import assemble, concat_starts
from ragcompress.kv.assembly.deviation import value_deviation
from ragcompress.kv.assembly.recompute import recompute_slots, slot_map
from ragcompress.models.arch import arch_for

from ..conftest import PASSAGES


def _context(model, tokenizer, passages):
    kv = KVAnswerer.from_generator(Generator.from_model(model, tokenizer))
    chunks, _ = kv.cache.get_or_encode(list(passages))
    prefix = kv.cache.encoder.prefix
    cache, _ = assemble(prefix, chunks, arch_for(model), model.config)
    slots = slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), model.device)
    return prefix, chunks, cache, slots


def test_deviation_is_the_distance_to_a_full_prefill(tiny_llama, tokenizer):
    """The first passage follows the prefix exactly as in a full prefill: no deviation; every later
    passage lost its view of the earlier ones: deviation > 0, equal to the distance between its
    cached values and those of a full recompute at the check layer. The cache is left as it was."""
    prefix, chunks, cache, slots = _context(tiny_llama, tokenizer, PASSAGES)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    dev = value_deviation(tiny_llama, cache, slots, check_layer=1)
    for layer, (k, v) in zip(cache.layers, before, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    first = prefix.length + int(chunks[0].token_ids.numel())
    assert dev.shape == (cache.get_seq_length(),)
    assert torch.all(dev[: prefix.length] == 0)
    zero = torch.zeros(first - prefix.length)
    torch.testing.assert_close(dev[prefix.length : first], zero, atol=1e-4, rtol=0)
    assert torch.all(dev[first:] > 1e-3)
    recompute_slots(tiny_llama, cache, slots, slots.candidates)  # now a full prefill of the prompt
    want = (before[1][1].float() - cache.layers[1].values.float()).norm(dim=-1).sum(dim=(0, 1))
    torch.testing.assert_close(dev[first:], want[first:], atol=1e-4, rtol=1e-4)


def test_blend_recomputes_the_most_deviating_tokens(tiny_llama, tokenizer):
    """At a small share every recomputed token comes from a later passage (the first has none)."""
    _, _, cache, slots = _context(tiny_llama, tokenizer, PASSAGES)
    dev = value_deviation(tiny_llama, cache, slots, check_layer=1)
    k = max(1, round(0.15 * slots.chunk_slots))
    top = torch.topk(dev[slots.candidates], k).values
    assert torch.all(top > 1e-3)


def test_check_layer_out_of_range(tiny_llama, tokenizer):
    _, _, cache, slots = _context(tiny_llama, tokenizer, PASSAGES[:1])
    for bad in (0, 2):
        with pytest.raises(ValueError, match="check_layer"):
            value_deviation(tiny_llama, cache, slots, check_layer=bad)
