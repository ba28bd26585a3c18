"""Gemma 3 270M base (real weights, ``ragcompress models fetch gemma-3-270m``): a cached chunk
longer than the local layers' 512-token window reproduces a fresh prefill, and the base model's
answer (no chat template) stops at the first line break, and the fast engine (CPU reference
kernels) answers like the eager path. Slow; skipped where not fetched."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ragcompress.models import fetch as model_fetch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not model_fetch.is_fetched("gemma-3-270m"),
        reason="run `ragcompress models fetch gemma-3-270m` first",
    ),
]

QUESTION = "Which river flows through the city of Lyon?"


def long_passage(sentences: int = 60) -> str:
    towns = ["Lyon", "Arles", "Tours", "Nantes", "Dijon", "Reims", "Metz", "Rouen", "Brest", "Nice"]
    rivers = ["Rhone", "Loire", "Seine", "Garonne", "Moselle", "Marne", "Saone", "Meuse", "Vienne"]
    lines = [
        f"Record {i}: the town of {towns[i % 10]} counted {1000 + 37 * i} visitors in year {1950 + i}, "
        f"most of them arriving by boat on the {rivers[i % 9]}."
        for i in range(sentences)
    ]
    lines.insert(sentences // 2, "The city of Lyon lies where the Saone flows into the Rhone.")
    return " ".join(lines)


@pytest.fixture(scope="module")
def gen() -> Any:
    from ragcompress.generate import Generator

    return Generator(model="gemma-3-270m", device="cpu", dtype="float32", max_new_tokens=12)


def test_real_gemma3_chunk_reproduces_a_fresh_prefill(gen):
    from ragcompress.kv.context import prepare_context
    from ragcompress.kv.encode.encoder import ChunkEncoder
    from ragcompress.models.arch import arch_for
    from ragcompress.models.compat import cache_kwargs

    lm: Any = gen.lm
    arch = arch_for(lm)
    assert arch.family == "gemma3" and arch.local_window == 512 and arch.fast_engine
    enc = ChunkEncoder.from_generator(gen)
    layout: Any = enc.layout
    text = long_passage()
    chunk = enc.encode([text])[0]
    assert chunk.length > 512  # the local layers' window cuts into the passage
    q = layout.question_ids(QUESTION)
    with torch.inference_mode():
        fresh = lm(input_ids=torch.tensor([layout.prompt_ids([text], QUESTION)])).logits[0, -len(q) :]
        ctx = prepare_context(lm, layout, [chunk], q)
        phys = ctx.cache.get_seq_length()
        got = lm(
            input_ids=torch.tensor([q]),
            position_ids=torch.arange(ctx.position, ctx.position + len(q))[None],
            cache_position=torch.arange(phys, phys + len(q)),
            **cache_kwargs(lm, ctx.cache),
            **ctx.step_kwargs(phys, len(q)),
        ).logits[0]
    torch.testing.assert_close(got.log_softmax(-1), fresh.log_softmax(-1), atol=2e-3, rtol=0)
    assert torch.equal(got.argmax(-1), fresh.argmax(-1))


def test_real_gemma3_answers_from_chunks_like_the_text_path_and_stops_at_a_newline(gen):
    from ragcompress.kv.answer import KVAnswerer

    text = long_passage()
    want = gen.generate(QUESTION, [text])
    got = KVAnswerer.from_generator(gen).answer(QUESTION, [text])
    assert got.token_ids == want.token_ids and got.text
    assert "\n" not in gen.tokenizer.decode(list(got.token_ids))


def test_real_gemma3_fast_engine_answers_like_the_eager_path(gen):
    """The fast engine's CPU reference (windowed attention by logical position at the local
    layers) over a passage longer than the window, then split into two chunks in either order."""
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.fast.answer import FastKVAnswerer

    eager = KVAnswerer.from_generator(gen)
    fast = FastKVAnswerer.from_generator(gen, capacity=2048, max_question=64)
    first, second = long_passage(8), "The city of Lyon lies where the Saone flows into the Rhone."
    for passages in ([long_passage(20)], [first, second], [second, first]):  # 20 sentences: ~700 tokens
        want, got = eager.answer(QUESTION, passages), fast.answer(QUESTION, passages)
        assert got.token_ids == want.token_ids and len(want.token_ids) > 0
        assert got.stats.extra["engine"] == "fast" and got.stats.extra["chunks"] == len(passages)
