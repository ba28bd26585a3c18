"""``blend_link``'s ranking on hand-made slots, its sentence table, and its binding."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.assembly.blend_link import link_ranking, sentence_ends
from ragcompress.kv.encode.encoder import prefix_kv

from ..conftest import PASSAGES, QUESTION

END = 1  # the token that ends a sentence in these hand-made slots
ENDS = torch.zeros(32, dtype=torch.bool)
ENDS[END] = True
# (passage, sentence tokens, question attention per token)
SENTENCES = [
    (0, [20, 6, 7, END], 0.1),  # S0 shares (6, 7) with the top sentence but comes before it
    (1, [5, 6, 7, 3, 4, END], 0.9),  # S1: the question's top sentence (the first hop)
    (1, [8, 9, END], 0.05),
    (2, [10, 6, 7, 11, END], 0.02),  # S3: later, shares (6, 7): the bridge
    (2, [12, 13, END], 0.3),
    (3, [14, 3, 4, 17, END], 0.01),  # S5: shares (3, 4), which the question holds too: no link
    (3, [15, 5, 16, END], 0.01),  # S6: shares a single token only
]
QUESTION_IDS = [2, 3, 4, 2]


def slots():
    """(scores, tokens, passages, sentence of each slot) with two prefix slots first."""
    tokens, passages, scores, sentence = [-1, -1], [-1, -1], [0.5, 0.5], [-1, -1]
    for i, (p, toks, s) in enumerate(SENTENCES):
        tokens += toks
        passages += [p] * len(toks)
        scores += [s] * len(toks)
        sentence += [i] * len(toks)
    return torch.tensor(scores), torch.tensor(tokens), torch.tensor(passages), torch.tensor(sentence)


def test_a_later_sentence_sharing_a_name_with_the_top_sentence_comes_first():
    scores, tokens, passages, sentence = slots()
    got = link_ranking(scores, tokens, passages, ENDS, QUESTION_IDS, top_sentences=1)
    chunk = passages >= 0
    assert bool((got[sentence == 3] >= 4).all())  # linked
    assert bool(((got[sentence == 1] >= 2) & (got[sentence == 1] <= 3)).all())  # the top sentence
    for other in (0, 2, 4, 5, 6):  # earlier, the question's own bigram, one token in common
        assert bool((got[sentence == other] <= 1).all()), other
    # the other slots keep blend_question's order
    rest = chunk & ~torch.isin(sentence, torch.tensor([1, 3]))
    assert torch.equal(got[rest], scores[rest] / scores.max())


def test_without_top_sentences_it_ranks_as_blend_question():
    scores, tokens, passages, _ = slots()
    got = link_ranking(scores, tokens, passages, ENDS, QUESTION_IDS, top_sentences=0)
    assert torch.equal(torch.argsort(got, stable=True), torch.argsort(scores, stable=True))


def test_slots_without_a_single_token_are_never_part_of_a_sentence():
    scores, tokens, passages, sentence = slots()
    tokens = tokens.clone()
    tokens[sentence == 3] = -1  # an eviction press kept different tokens per head there
    got = link_ranking(scores, tokens, passages, ENDS, QUESTION_IDS, top_sentences=1)
    assert bool((got[sentence == 3] <= 1).all())


def test_sentence_table_marks_sentence_ends(tokenizer):
    ends = sentence_ends(tokenizer)
    assert ends.shape == (len(tokenizer),) and ends is sentence_ends(tokenizer)  # built once
    ids = tokenizer("One. Two!\nThree", add_special_tokens=False)["input_ids"]
    marked = [tokenizer.decode([i]) for i in ids if ends[i]]
    assert any("." in m for m in marked) and any("!" in m for m in marked) and any("\n" in m for m in marked)
    assert not any(ends[i] for i in tokenizer(" One Two Three", add_special_tokens=False)["input_ids"])


def test_an_unbound_mode_says_what_it_needs(tiny_llama, tokenizer):
    from tests.support.tiny import make_tiny_llama

    gen = Generator.from_model(tiny_llama, tokenizer)
    kv = KVAnswerer.from_generator(gen, assembly={"name": "blend_link"})
    chunks, _ = kv.cache.get_or_encode(PASSAGES)
    prefix = prefix_kv(tiny_llama, kv.generator.layout)
    ids = kv.generator.layout.question_ids(QUESTION, ())
    bound = build_assembly({"name": "blend_link", "recompute": 0.3})
    ctx = bound.prepare(tiny_llama, prefix, chunks, ids)  # bound through the answerer's model
    assert 0 < ctx.recompute < 1
    other = make_tiny_llama(len(tokenizer), seed=5)  # its chunks come from a concat answerer
    plain = KVAnswerer.from_generator(Generator.from_model(other, tokenizer), assembly=None)
    theirs, _ = plain.cache.get_or_encode(PASSAGES)
    with pytest.raises(ValueError, match="blend_link needs the model's tokenizer"):
        bound.prepare(other, prefix_kv(other, plain.generator.layout), theirs, ids)


def test_bind_builds_one_device_table_per_model_covering_its_vocabulary(tiny_llama, tokenizer):
    from ragcompress.kv.assembly.blend_link import _ENDS_BY_MODEL

    mode = build_assembly({"name": "blend_link"})
    mode.bind(tiny_llama, tokenizer)
    table = _ENDS_BY_MODEL[tiny_llama][1]
    mode.bind(tiny_llama, tokenizer)  # what prepare_context does on every request: nothing new
    assert _ENDS_BY_MODEL[tiny_llama][1] is table
    assert table.numel() >= tiny_llama.config.vocab_size and table.device == tiny_llama.device
    assert torch.equal(table[: len(tokenizer)], sentence_ends(tokenizer))
