"""``blend_question``'s draft: the greedy answer's first tokens over the stale context, voting
with the question's last tokens; the context it was drafted over is left as it was."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.assemble import concat_starts
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.assembly.blend_question import question_attention
from ragcompress.kv.assembly.draft import draft_answer
from ragcompress.kv.assembly.recompute import slot_map
from ragcompress.kv.assembly.selective import stale_context
from ragcompress.kv.context import prepare_context
from ragcompress.kv.encode.encoder import prefix_kv
from ragcompress.kv.presses.knorm import KnormPress

from ..conftest import PASSAGES, QUESTION
from .test_assembly_modes import answerer


def concat_context(kv):
    gen = kv.generator
    chunks, _ = kv.cache.get_or_encode(PASSAGES)
    ids = gen.layout.question_ids(QUESTION, ())
    return chunks, ids, prepare_context(gen.lm, gen.layout, chunks, ids, None)


@pytest.mark.parametrize("presses", [(), (KnormPress(0.5),)], ids=["full", "knorm"])
def test_draft_is_the_start_of_the_concat_answer(reader, tokenizer, presses):
    """Gemma 3's local layers read the context by logical position (evicted tokens leave gaps)."""
    kv = answerer(reader, tokenizer, None, presses=presses)
    answer = kv.answer(QUESTION, PASSAGES)
    _, ids, ctx = concat_context(kv)
    before = [(layer.keys, layer.values) for layer in ctx.cache.layers]
    length = ctx.cache.get_seq_length()
    for n in (1, 3):
        assert draft_answer(reader, ctx, ids, n) == list(answer.token_ids[:n])
        # the context is exactly as it was: same tensors, same length
        assert ctx.cache.get_seq_length() == length
        for layer, (k, v) in zip(ctx.cache.layers, before, strict=True):
            assert layer.keys is k and layer.values is v
    assert draft_answer(reader, ctx, ids, 0) == []


def test_draft_ends_at_end_of_sequence(tiny_llama, tokenizer):
    kv = answerer(tiny_llama, tokenizer, None)
    _, ids, ctx = concat_context(kv)
    first = draft_answer(tiny_llama, ctx, ids, 1)[0]
    saved = tiny_llama.generation_config.eos_token_id
    tiny_llama.generation_config.eos_token_id = [first]
    try:
        assert draft_answer(tiny_llama, ctx, ids, 4) == []
    finally:
        tiny_llama.generation_config.eos_token_id = saved


def test_draft_tokens_vote_with_the_question(reader, tokenizer):
    """The score with a draft is the question's attention with the draft appended, the draft's
    tokens counted among the voters."""
    kv = answerer(reader, tokenizer, None)
    chunks, ids, ctx = concat_context(kv)
    start = prefix_kv(reader, kv.generator.layout).length
    slots = slot_map(start, chunks, concat_starts(start, chunks), reader.device)
    mode = build_assembly({"name": "blend_question", "recompute": 0.3, "last_tokens": 2, "draft_tokens": 3})
    draft = draft_answer(reader, stale_context(reader, ctx.cache, ctx.position, slots), ids, 3)
    assert len(draft) == 3
    got = mode.score(reader, ctx.cache, slots, ids, ctx.position)
    want = question_attention(reader, ctx.cache, [*ids, *draft], ctx.position, slots.positions, 5)
    torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)
    # a draft decoded elsewhere (the fast engine's) is taken as given, cut to draft_tokens
    given = mode.score(reader, ctx.cache, slots, ids, ctx.position, [*draft, 7, 7])
    torch.testing.assert_close(given, want, atol=0.0, rtol=0.0)
    without = build_assembly({"name": "blend_question", "recompute": 0.3, "last_tokens": 2})
    assert not torch.equal(without.score(reader, ctx.cache, slots, ids, ctx.position), got)
