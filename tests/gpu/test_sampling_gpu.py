"""Sampling on the fast engine on CUDA (captured graphs: greedy stays in the graph, the sampler
runs on the step's logits outside it); tests/kv/test_kv_sampling.py is the CPU side."""

from __future__ import annotations

import pytest

from ragcompress import Sampling
from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.fast.answer import FastKVAnswerer
from tests.kv.test_kv_sampling import HISTORY, HOT, PASSAGES, QUESTION
from tests.support.tiny import make_tiny_llama


@pytest.fixture(scope="module")
def pair(tokenizer) -> tuple[KVAnswerer, FastKVAnswerer]:
    gen = Generator.from_model(make_tiny_llama(len(tokenizer)).cuda(), tokenizer, max_new_tokens=12)
    fast = FastKVAnswerer.from_generator(gen, capacity=512, max_question=128)
    return KVAnswerer.from_generator(gen), fast


@pytest.mark.gpu
def test_gpu_sampling_replays_a_seed_and_matches_the_eager_path(pair) -> None:
    eager, fast = pair
    greedy = eager.answer(QUESTION, PASSAGES).token_ids
    assert fast.answer(QUESTION, PASSAGES).token_ids == greedy
    assert fast.engine.graphs
    seen = set()
    for seed in (1, 2, 3):
        sampling = Sampling(temperature=HOT, top_k=50, seed=seed)
        got = fast.answer(QUESTION, PASSAGES, sampling=sampling, history=HISTORY)
        assert fast.answer(QUESTION, PASSAGES, sampling=sampling, history=HISTORY).token_ids == got.token_ids
        assert eager.answer(QUESTION, PASSAGES, sampling=sampling, history=HISTORY).token_ids == got.token_ids
        seen.add(got.token_ids)
    assert len(seen) == 3
    # a greedy request after sampled ones still gets the graph's argmax
    assert fast.answer(QUESTION, PASSAGES).token_ids == greedy


@pytest.mark.gpu
def test_gpu_stop_strings_end_the_fast_stream(pair) -> None:
    _, fast = pair
    full = fast.answer(QUESTION, PASSAGES)
    stop = full.text[5:8]
    stream = fast.stream(QUESTION, PASSAGES, sampling=Sampling(stop=(stop,)))
    text = "".join(stream).strip()
    assert text == full.text[: full.text.index(stop)].strip()
    assert stream.answer is not None and len(stream.answer.token_ids) < len(full.token_ids)
