"""KV-path fixtures: tiny Llamas with each RoPE scaling we claim to re-rotate exactly."""

from __future__ import annotations

import pytest

from tests.support.tiny import make_tiny_llama

ROPES = {
    "default": {},
    "linear": {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
    "llama3": {
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        }
    },
}

PASSAGES = [
    "The Eiffel Tower is 330 metres tall and was finished in 1889.",
    "Bananas are berries, botanically speaking, while strawberries are not.",
    "Mount Kilimanjaro in Tanzania is the highest mountain in Africa.",
]
QUESTION = "How tall is the Eiffel Tower?"


@pytest.fixture(scope="session", params=sorted(ROPES))
def rope_llama(request, tokenizer):
    return make_tiny_llama(len(tokenizer), seed=1, **ROPES[request.param])


@pytest.fixture()
def generator(tiny_llama, tokenizer):
    from ragcompress.generate import Generator

    return Generator.from_model(tiny_llama, tokenizer, max_new_tokens=4)
