"""The cache keyword follows the model's forward signature (transformers renamed it)."""

from __future__ import annotations

import warnings
from typing import Any

from ragcompress.models.compat import cache_kwargs, output_cache


class _Old:
    def forward(self, input_ids: Any = None, past_key_values: Any = None) -> None: ...


class _New:
    def forward(self, input_ids: Any = None, cache: Any = None, **kwargs: Any) -> None: ...


class _Out(dict):  # a ModelOutput is a dict whose keys are its non-None fields
    past_key_values = "legacy"


class _NewOut(dict):  # an output class with the new field; its old name must not be read
    cache = None

    @property
    def past_key_values(self) -> Any:
        raise AssertionError("read the deprecated attribute")


def test_cache_keyword_matches_the_forward() -> None:
    assert cache_kwargs(_Old(), 1) == {"past_key_values": 1}
    assert cache_kwargs(_New(), 2) == {"cache": 2}


def test_output_cache_prefers_the_new_field() -> None:
    assert output_cache(_Out(cache="new")) == "new"
    assert output_cache(_Out()) == "legacy"
    assert output_cache(_NewOut(cache="new")) == "new"
    assert output_cache(_NewOut()) is None


def test_real_model_takes_its_keyword(tiny_llama) -> None:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=tiny_llama.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the keyword it picked is not deprecated
        out = tiny_llama(
            input_ids=torch.tensor([[5, 6, 7]]), **cache_kwargs(tiny_llama, cache), use_cache=True
        )
        assert output_cache(out).get_seq_length() == 3
        assert output_cache(tiny_llama(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False)) is None
