"""FastKVAnswerer gives the eager KV path's tokens from the same cached chunks (CPU: the fast
step runs eagerly with reference attention; tests/gpu covers graphs and flash kernels)."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.fast import BufferOverflowError
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.kvzip import KVzipPress
from ragcompress.kv.presses.quantize import QuantizePress

PASSAGES = [
    "The Rhine flows from the Swiss Alps to the North Sea through Germany and the Netherlands.",
    "Warsaw is the capital of Poland; the Vistula river runs through the city.",
    "Chopin was born in 1810 near Warsaw and left Poland at the age of twenty.",
]
QUESTIONS = ["Where was Chopin born?", "Which river runs through Warsaw?"]


@pytest.fixture(scope="module")
def gen(tokenizer, tiny_llama) -> Generator:
    return Generator.from_model(tiny_llama, tokenizer, max_new_tokens=10)


# uncompressed, evicted by key norm / by reconstruction attention, each then int4
PRESSES = [
    (),
    (KnormPress(ratio=0.5), QuantizePress(bits=4, group_size=8)),
    (KVzipPress(ratio=0.5), QuantizePress(bits=4, group_size=8)),
]


def assert_fast_matches_eager(eager: KVAnswerer, fast: FastKVAnswerer) -> None:
    """Same greedy tokens for every question over passages in several orders and subsets."""
    for q in QUESTIONS:
        for passages in (PASSAGES, PASSAGES[1:], PASSAGES[::-1]):
            want, got = eager.answer(q, passages), fast.answer(q, passages)
            assert got.token_ids == want.token_ids and len(want.token_ids) > 0
            assert got.stats.context_tokens == want.stats.context_tokens
            assert got.stats.extra["engine"] == "fast" and got.stats.extra["chunks"] == len(passages)
            assert "".join(fast.stream(q, passages)).strip() == got.text


@pytest.mark.parametrize("presses", PRESSES)
def test_fast_answers_match_the_eager_path(gen, presses) -> None:
    eager = KVAnswerer.from_generator(gen, presses=presses)
    assert_fast_matches_eager(
        eager, FastKVAnswerer.from_generator(gen, presses=presses, capacity=512, max_question=64)
    )


def test_second_request_reuses_cached_chunks(gen) -> None:
    fast = FastKVAnswerer.from_generator(gen, capacity=512, max_question=64)
    first = fast.answer(QUESTIONS[0], PASSAGES)
    again = fast.answer(QUESTIONS[1], PASSAGES)
    assert first.stats.extra["chunks_encoded"] == 3
    assert again.stats.extra["chunks_encoded"] == 0 and again.stats.extra["chunks_hit"] == 3


def test_context_larger_than_the_buffer_is_a_clear_error(gen) -> None:
    fast = FastKVAnswerer.from_generator(gen, capacity=40, max_question=64)
    with pytest.raises(BufferOverflowError, match="context slots; the buffer has 40"):
        fast.answer(QUESTIONS[0], PASSAGES)


@pytest.mark.slow
def test_fast_answers_match_on_the_packaged_reader() -> None:
    from ragcompress.corpus import load_passages, load_questions

    gen = Generator(max_new_tokens=12)
    passages = [p.text for p in load_passages()[:3]]
    question = load_questions()[0].question
    eager = KVAnswerer.from_generator(gen).answer(question, passages)
    fast = FastKVAnswerer.from_generator(gen, capacity=2048, max_question=64).answer(question, passages)
    assert fast.token_ids == eager.token_ids


def test_a_fast_answerer_leaves_the_model_untouched(gen) -> None:
    """Building and running the engine changes no parameter of the user's model: same tensors
    (data pointers, version counters), same bytes, same state dict; answers as the eager path."""
    from tests.support.tiny import assert_untouched, param_snapshot

    model = gen.lm
    before = param_snapshot(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fast = FastKVAnswerer.from_generator(gen, capacity=512, max_question=64)
    eager = KVAnswerer.from_generator(gen)
    for q in QUESTIONS:
        assert fast.answer(q, PASSAGES).token_ids == eager.answer(q, PASSAGES).token_ids
    assert fast.engine.step is not None and fast.engine.step.model is model
    assert_untouched(model, before)
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in state.items())


def test_fast_engine_off_cuda_warns_the_user(gen) -> None:
    if gen.lm.device.type == "cuda":
        pytest.skip("the warning is for CPU readers")
    with pytest.warns(RuntimeWarning, match="without CUDA the fast engine runs its torch reference"):
        FastKVAnswerer.from_generator(gen, capacity=64, max_question=16)
