"""The llmlingua anchor's wrapper: legacy tuple caches in and out, the same logits as a plain
``Cache`` forward, and no deprecated keyword toward the wrapped model."""

from __future__ import annotations

import warnings

import torch
from ragcompress_bench.anchors.legacy_cache import LegacyCacheModel

from ragcompress.models.compat import cache_kwargs, output_cache


def test_legacy_tuples_round_trip_and_match_the_cache_path(tiny_llama) -> None:
    from transformers import DynamicCache

    first, second = torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9]])
    ref_cache = DynamicCache(config=tiny_llama.config)
    with torch.inference_mode():
        tiny_llama(input_ids=first, **cache_kwargs(tiny_llama, ref_cache), use_cache=True)
        ref = tiny_llama(input_ids=second, **cache_kwargs(tiny_llama, ref_cache), use_cache=True)
    wrapped = LegacyCacheModel(tiny_llama)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error", FutureWarning)
        out = wrapped(input_ids=first, use_cache=True)
        legacy = out.past_key_values  # what llmlingua reads
        assert isinstance(legacy, list) and all(len(kv) == 2 for kv in legacy)
        assert legacy[0][0].shape[-2] == 3
        out = wrapped(input_ids=second, past_key_values=legacy, use_cache=True)
    torch.testing.assert_close(out.logits, ref.logits)
    assert output_cache(out)[0][0].shape[-2] == 5
