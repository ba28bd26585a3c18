"""A request never changes the chunks it reads: after answering with each assembly mode (eager,
and the fast engine on its CPU reference path, plain and compressed chunks), every cached chunk is
bit-identical to what was encoded, the store still hands it out (its in-memory check finds no
write), and the same question gets the same answer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.quantize import QuantizePress

from ..conftest import PASSAGES, QUESTION
from .test_assembly_modes import MODES
from .test_fast_modes import FAST_MODES


def _tensors(kv: Any) -> dict[str, list[torch.Tensor]]:
    chunks, _ = kv.cache.get_or_encode(PASSAGES)
    return {
        c.key.digest: [c.token_ids, *(t for la in c.layers for t in la.tensors().values())] for c in chunks
    }


def _check(kv: Any) -> None:
    before = {k: [t.clone() for t in ts] for k, ts in _tensors(kv).items()}
    first = kv.answer(QUESTION, PASSAGES).token_ids
    kv.answer("What else is there?", list(reversed(PASSAGES)))
    _, stats = kv.cache.get_or_encode(PASSAGES)
    assert stats.encoded == 0, stats  # every chunk still served: none found written in memory
    for digest, now in _tensors(kv).items():
        assert all(torch.equal(a, b) for a, b in zip(before[digest], now, strict=True))
    assert kv.answer(QUESTION, PASSAGES).token_ids == first


@pytest.mark.parametrize("spec", MODES, ids=[str(sorted(m.items())) for m in MODES])
def test_eager_answers_leave_the_cached_chunks_as_encoded(reader, tokenizer, spec) -> None:
    _check(
        KVAnswerer.from_generator(Generator.from_model(reader, tokenizer, max_new_tokens=4), assembly=spec)
    )


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "knorm+int4"])
@pytest.mark.parametrize("spec", FAST_MODES, ids=[str(sorted(m.items())) for m in FAST_MODES])
def test_fast_answers_leave_the_cached_chunks_as_encoded(tiny_llama, tokenizer, spec, compressed) -> None:
    presses = (KnormPress(ratio=0.5), QuantizePress(bits=4, group_size=8)) if compressed else ()
    gen = Generator.from_model(tiny_llama, tokenizer, max_new_tokens=4)
    _check(FastKVAnswerer.from_generator(gen, presses=presses, assembly=spec, capacity=512, max_question=64))
