"""Bad assembly specs fail with a ValueError naming what is wrong, before any request."""

from __future__ import annotations

import pytest

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.assembly import build_assembly


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"name": "nope"}, "nope"),
        ({}, "None"),
        ({"name": "blend", "recompute": 1.5}, "recompute"),
        ({"name": "blend", "recompute": -0.1}, "recompute"),
        ({"name": "blend", "recompute": "lots"}, "recompute"),
        ({"name": "blend", "recompute": True}, "recompute"),
        ({"name": "blend", "selection": "x"}, "selection"),
        ({"name": "blend", "check_layer": 0}, "check_layer"),
        ({"name": "blend", "check_layer": True}, "check_layer"),
        ({"name": "blend", "check_layer": 1.5}, "check_layer"),
        ({"name": "blend_question", "recompute": 2}, "blend_question.recompute"),
        ({"name": "blend_question", "check_layer": 1}, "check_layer"),
        ({"name": "blend_question", "last_tokens": 0}, "last_tokens"),
        ({"name": "blend_question", "last_tokens": True}, "last_tokens"),
        ({"name": "blend_question", "last_tokens": 2.5}, "last_tokens"),
        ({"name": "blend_question", "draft_tokens": -1}, "draft_tokens"),
        ({"name": "blend_question", "draft_tokens": True}, "draft_tokens"),
        ({"name": "blend_question", "draft_tokens": 1.5}, "draft_tokens"),
        ({"name": "blend_link", "top_sentences": -1}, "blend_link.top_sentences"),
        ({"name": "blend_link", "top_sentences": True}, "top_sentences"),
        ({"name": "blend_link", "recompute": -0.1}, "blend_link.recompute"),
        ({"name": "ape", "temperature": 0.0}, "temperature"),
        ({"name": "ape", "temperature": -1}, "temperature"),
        ({"name": "ape", "scale": 0}, "scale"),
        ({"name": "ape", "scale": 100.0}, "scale"),
        ({"name": "concat", "recompute": 0.5}, "recompute"),
    ],
)
def test_bad_spec_names_the_field(spec, named):
    with pytest.raises(ValueError, match=named):
        build_assembly(spec)


def test_check_layer_beyond_the_model_fails_at_build(tiny_llama, tokenizer):
    gen = Generator.from_model(tiny_llama, tokenizer)  # 2 layers: only layer 1 can be checked
    with pytest.raises(ValueError, match=r"check_layer must be below the model's 2 layers"):
        KVAnswerer.from_generator(gen, assembly={"name": "blend", "check_layer": 2})


def test_not_a_spec():
    with pytest.raises(TypeError, match="assembly"):
        build_assembly(3.5)  # type: ignore[arg-type]


def test_model_without_mask_support_fails_at_build(tokenizer):
    from tests.support.tiny import make_tiny_llama

    model = make_tiny_llama(len(tokenizer), seed=5)
    model.config._attn_implementation = "flash_attention_2"  # what ape cannot pass a 4D mask to
    gen = Generator.from_model(model, tokenizer)
    with pytest.raises(ValueError, match="ape"):
        KVAnswerer.from_generator(gen, assembly={"name": "ape"})
    with pytest.raises(ValueError, match=r"not supported by the KV path; supported families: \[.*'llama'"):
        build_assembly({"name": "blend"}).check(_Headless())


class _Headless:
    """A 'model' of no known family: no adapter names its layers or RoPE."""

    config = None
