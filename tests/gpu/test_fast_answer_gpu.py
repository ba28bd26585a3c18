"""FastKVAnswerer on CUDA (captured graphs, flash cascade, Triton chunk writes) gives the eager KV
path's greedy tokens from the same cached chunks; tests/kv/test_fast_answer.py is the CPU side.

The device machines have no packaged models: set ``RAGCOMPRESS_TEST_TOKENIZER`` to a tokenizer
folder there (the reader's weights are a tiny random Llama either way)."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.fast.answer import FastKVAnswerer
from tests.kv.test_fast_answer import PASSAGES, PRESSES, QUESTIONS, assert_fast_matches_eager
from tests.support.tiny import make_tiny_llama


@pytest.fixture(scope="module")
def gen(tokenizer) -> Generator:
    tok = tokenizer
    model = make_tiny_llama(len(tok)).cuda()
    return Generator.from_model(model, tok, max_new_tokens=10)


@pytest.mark.gpu
@pytest.mark.parametrize("presses", PRESSES)
def test_gpu_fast_answers_match_the_eager_path(gen, presses) -> None:
    eager = KVAnswerer.from_generator(gen, presses=presses)
    fast = FastKVAnswerer.from_generator(gen, presses=presses, capacity=512, max_question=64)
    assert fast.engine.graphs, "on CUDA the fast answerer must run captured graphs"
    assert_fast_matches_eager(eager, fast)
    again = fast.answer(QUESTIONS[0], PASSAGES)
    assert again.stats.extra["chunks_encoded"] == 0 and again.stats.extra["chunks_hit"] == 3
    assert torch.cuda.memory_allocated() > 0
