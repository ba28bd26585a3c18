"""The KV path on tiny seeded Llamas: encode → store → assemble → generate, checked against
fresh prefills of the same prompt."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.chunk import DenseLayer
from ragcompress.kv.context import chunk_context, generate_from_chunks, rotary_of, stream_from_chunks
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.models.compat import cache_kwargs, output_cache
from ragcompress.models.rope import rerotate
from ragcompress.registry import register
from tests.support.tiny import greedy_logits

from .conftest import PASSAGES, QUESTION


def _layers(cache: Any) -> list[Any]:
    """A cache's layers, each with ``keys`` / ``values`` (batch, kv_heads, seq, head_dim)."""
    return list(cache.layers)


def question_logits(model, layout, chunks, question, shift: int = 0):
    """Last-token logits after prefilling the question against the assembled cache;
    ``shift`` moves the whole context (prefix included) by that many positions."""
    cache, pos = chunk_context(model, layout, chunks)
    if shift:
        rot = rotary_of(model)
        for layer in _layers(cache):
            layer.keys = rerotate(layer.keys, shift, rot)
    ids = layout.question_ids(question)
    phys = cache.get_seq_length()
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([ids]),
            **cache_kwargs(model, cache),
            position_ids=torch.arange(pos + shift, pos + shift + len(ids))[None],
            cache_position=torch.arange(phys, phys + len(ids)),
        )
    return out.logits[0, -1]


def encoder_for(model, tokenizer):
    return ChunkEncoder.from_generator(Generator.from_model(model, tokenizer))


def test_single_chunk_matches_fresh_prefill(rope_llama, tokenizer):
    enc = encoder_for(rope_llama, tokenizer)
    chunks = enc.encode(PASSAGES)
    for text, chunk in zip(PASSAGES, chunks, strict=True):
        ref = greedy_logits(rope_llama, enc.layout.prompt_ids([text], QUESTION))[-1]
        got = question_logits(rope_llama, enc.layout, [chunk], QUESTION)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    gen = Generator.from_model(rope_llama, tokenizer, max_new_tokens=4)
    for text, chunk in zip(PASSAGES, chunks, strict=True):
        assert (
            generate_from_chunks(gen, QUESTION, [chunk]).token_ids == gen.generate(QUESTION, [text]).token_ids
        )


@pytest.mark.parametrize("shift", [37, 1500])
def test_context_moved_to_any_offset_matches_fresh_prefill(rope_llama, tokenizer, shift):
    """Re-rotating every cached key by ``shift`` and continuing at ``pos + shift`` must give the
    same logits: RoPE attention depends only on relative positions."""
    enc = encoder_for(rope_llama, tokenizer)
    chunk = enc.encode(PASSAGES[:1])[0]
    ref = greedy_logits(rope_llama, enc.layout.prompt_ids(PASSAGES[:1], QUESTION))[-1]
    got = question_logits(rope_llama, enc.layout, [chunk], QUESTION, shift=shift)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)


def test_several_chunks_differ_only_by_cross_passage_attention(tiny_llama, tokenizer):
    enc = encoder_for(tiny_llama, tokenizer)
    chunks = enc.encode(PASSAGES)
    cache, pos = chunk_context(tiny_llama, enc.layout, chunks)
    full_ids = enc.layout.prompt_ids(PASSAGES, QUESTION)
    assert pos + len(enc.layout.question_ids(QUESTION)) == len(full_ids)
    with torch.inference_mode():
        full = output_cache(tiny_llama(input_ids=torch.tensor([full_ids]), use_cache=True))
    plen, n0 = enc.prefix.length, chunks[0].length
    layers, full_layers = _layers(cache), _layers(full)
    for got, ref in zip(layers, full_layers, strict=True):
        # prefix and the first passage see exactly what a full prefill sees
        torch.testing.assert_close(
            got.keys[:, :, : plen + n0], ref.keys[:, :, : plen + n0], atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            got.values[:, :, : plen + n0], ref.values[:, :, : plen + n0], atol=1e-5, rtol=1e-4
        )
    # layer 0 keys do not depend on attention: after re-rotation every chunk matches
    torch.testing.assert_close(layers[0].keys, full_layers[0].keys[:, :, :pos], atol=1e-4, rtol=1e-4)
    # deeper layers of later passages differ: they never attended to earlier passages
    gap = (layers[-1].values[:, :, plen + n0 :] - full_layers[-1].values[:, :, plen + n0 : pos]).abs().max()
    assert gap > 1e-3
    ref_logits = greedy_logits(tiny_llama, full_ids)[-1]
    assert not torch.allclose(
        question_logits(tiny_llama, enc.layout, chunks, QUESTION), ref_logits, atol=1e-5
    )


def test_second_call_hits_and_answers_identically(generator):
    kv = KVAnswerer.from_generator(generator)
    first = kv.answer(QUESTION, PASSAGES)
    assert first.stats.extra["chunks_encoded"] == 3 and first.stats.extra["chunks_hit"] == 0
    second = kv.answer(QUESTION, PASSAGES[::-1][:2] + PASSAGES[:1])
    again = kv.answer(QUESTION, PASSAGES)
    assert second.stats.extra["chunks_encoded"] == 0 and second.stats.extra["chunks_hit"] == 3
    assert again.token_ids == first.token_ids and again.text == first.text
    assert again.stats.extra["chunk_bytes"] > 0 and again.stats.extra["chunk_bytes_fp16"] > 0
    assert again.stats.extra["ttft_ms"] > 0
    streamed = "".join(stream_from_chunks(generator, QUESTION, kv.cache.get_or_encode(PASSAGES)[0]))
    assert streamed.strip() == first.text


def test_repeated_passage_is_encoded_once(generator):
    cache = ChunkCache(ChunkEncoder.from_generator(generator), MemoryStore(1 << 26))
    chunks, stats = cache.get_or_encode([PASSAGES[0], PASSAGES[1], PASSAGES[0]])
    assert stats.encoded == 2 and stats.hits == 0 and chunks[0] is chunks[2]


def test_disk_cache_survives_reopen(generator, tmp_path):
    first = KVAnswerer.from_generator(generator, cache_dir=tmp_path).answer(QUESTION, PASSAGES)
    # a new answerer (fresh memory tier) over the same directory, as a new process would build
    reopened = KVAnswerer.from_generator(generator, cache_dir=tmp_path)
    second = reopened.answer(QUESTION, PASSAGES)
    assert second.stats.extra["chunks_encoded"] == 0 and second.stats.extra["chunks_hit"] == 3
    assert second.token_ids == first.token_ids


def test_corrupt_file_is_reencoded_with_reason(generator, tmp_path):
    enc = ChunkEncoder.from_generator(generator)
    disk = DiskStore(tmp_path)
    ChunkCache(enc, disk).get_or_encode(PASSAGES[:1])
    path = disk.path(ChunkCache(enc, disk).keys(PASSAGES[:1])[0])
    path.write_bytes(path.read_bytes()[:100])
    _, stats = ChunkCache(enc, DiskStore(tmp_path)).get_or_encode(PASSAGES[:1])
    assert stats.encoded == 1 and "truncated" in next(iter(stats.misses.values()))
    _, stats = ChunkCache(enc, DiskStore(tmp_path)).get_or_encode(PASSAGES[:1])
    assert stats.hits == 1


def test_keys_change_with_model_dtype_prefix_and_presses(tiny_llama, tokenizer):
    from ragcompress.prompt import PromptLayout
    from tests.support.tiny import make_tiny_llama

    enc = encoder_for(tiny_llama, tokenizer)
    ids = enc.passage_ids(validate(PASSAGES[0]))
    base = enc.key(ids)
    assert base == encoder_for(tiny_llama, tokenizer).key(ids)  # deterministic
    other_seed = make_tiny_llama(len(tokenizer), seed=5)
    other_prefix = ChunkEncoder(tiny_llama, tokenizer, PromptLayout(tokenizer, system="Be terse."))
    keys = [
        encoder_for(other_seed, tokenizer).key(ids),
        encoder_for(make_tiny_llama(len(tokenizer)).to(torch.bfloat16), tokenizer).key(ids),
        other_prefix.key(ids),
        enc.key(ids, [KeepFirst(0.5)]),
        enc.key(ids, [KeepFirst(0.25)]),
        enc.key(ids[:-1]),
        dataclasses.replace(base, format=base.format + 1),
    ]
    digests = {k.digest for k in keys} | {base.digest}
    assert len(digests) == len(keys) + 1


def validate(text):
    from ragcompress.types import Passage

    return Passage(text)


@register("test-keep-first", kind="press")
@dataclasses.dataclass
class KeepFirst:
    """Keeps the first ``ratio`` of a chunk's tokens; records the attention it was given."""

    ratio: float = 0.5
    needs_attention: ClassVar[bool] = True
    seen: ClassVar[list[tuple[int, tuple[int, ...]]]] = []

    def __call__(self, layer: DenseLayer, *, layer_idx: int, attn: torch.Tensor | None) -> DenseLayer:
        assert attn is not None
        KeepFirst.seen.append((layer_idx, tuple(attn.shape)))
        k, v, p = layer.dense()
        n = max(1, int(k.shape[1] * self.ratio))
        return DenseLayer(k[:, :n], v[:, :n], p[:, :n])


def test_press_hook_gets_attention_and_keeps_positions(generator):
    KeepFirst.seen.clear()
    cache = ChunkCache(ChunkEncoder.from_generator(generator), MemoryStore(1 << 26), presses=[KeepFirst(0.5)])
    chunks, _ = cache.get_or_encode(PASSAGES)
    cfg = generator.lm.config
    for c in chunks:
        assert c.num_tokens == c.length // 2 and c.nbytes < c.nbytes_fp16 * 2
    shapes = {s for _, s in KeepFirst.seen}
    assert {(cfg.num_attention_heads, c.length, c.length) for c in chunks} == shapes
    assert cfg._attn_implementation != "eager"  # switched back after encoding
    _, pos = chunk_context(generator.lm, generator.layout, chunks)
    assert pos == len(generator.layout.prefix_ids()) + sum(c.length for c in chunks)
    answer = generate_from_chunks(generator, QUESTION, chunks)
    assert answer.stats.context_tokens == pos + len(generator.layout.question_ids(QUESTION))


def test_too_long_passage_is_named(tokenizer):
    from tests.support.tiny import make_tiny_llama

    model = make_tiny_llama(len(tokenizer), max_position_embeddings=96)
    enc = encoder_for(model, tokenizer)
    from ragcompress.types import Passage

    long = Passage("word " * 200, id="the-long-one")
    with pytest.raises(ValueError, match="the-long-one"):
        enc.encode([Passage(PASSAGES[0]), long])


def test_chunks_from_another_model_are_refused(generator, tokenizer):
    from tests.support.tiny import make_tiny_llama

    other = encoder_for(make_tiny_llama(len(tokenizer), seed=9), tokenizer)
    with pytest.raises(ValueError, match="encoded for model"):
        generate_from_chunks(generator, QUESTION, other.encode(PASSAGES[:1]))


@pytest.mark.slow
def test_single_chunk_exact_on_packaged_smollm2():
    from ragcompress.models.load import load_reader

    model, tok = load_reader(device="cpu", dtype="float32")
    gen = Generator.from_model(model, tok, max_new_tokens=6)
    kv = KVAnswerer.from_generator(gen)
    chunks, _ = kv.cache.get_or_encode(PASSAGES[:1])
    ref = greedy_logits(model, gen.layout.prompt_ids(PASSAGES[:1], QUESTION))[-1]
    got = question_logits(model, gen.layout, chunks, QUESTION)
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)
    assert kv.answer(QUESTION, PASSAGES[:1]).token_ids == gen.generate(QUESTION, PASSAGES[:1]).token_ids


def test_decode_continues_a_ready_cache_like_a_fresh_prefill(generator):
    """The generator's public decode entry (what the KV path builds on): a cache holding the
    first tokens of a prompt, continued with the rest, answers as the whole prompt does, and
    counts the context before decoding grows the cache."""
    from transformers import DynamicCache

    ids = generator.layout.prompt_ids(PASSAGES[:1], QUESTION)
    cache = DynamicCache(config=generator.lm.config)
    with torch.inference_mode():
        generator.lm(input_ids=torch.tensor([ids[:-3]]), **cache_kwargs(generator.lm, cache), use_cache=True)
    resumed = generator.decode(ids[-3:], cache, max_new_tokens=4)
    fresh = generator.decode(ids, None, max_new_tokens=4)
    assert resumed.token_ids == fresh.token_ids and fresh.stats.new_tokens > 0
    assert resumed.stats.context_tokens == fresh.stats.context_tokens == len(ids)
    assert resumed.stats.prompt_tokens == 3
