"""Host-resident chunks on the fast engine: streamed layer group by layer group into the buffer,
they give exactly the context (and so the greedy tokens) of the same chunks held on the device,
for uncompressed, knorm + int4 and kvzip + int4 chunks, reordered, repeated and mixed with
device chunks. On the CPU the streaming is a copy through the torch reference over the same
tables the CUDA kernels read; the ``gpu`` tests run pinned memory, the side stream and the
gated CUDA graphs in bf16."""

from __future__ import annotations

import pytest
import torch

import ragcompress
from ragcompress.generate import Generator
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.fast import FastGenerator, HostChunk, PackedChunk, write_batch
from ragcompress.kv.fast.stream import HostStream, schedule
from ragcompress.kv.fast.stream_direct import DirectHostStream
from tests.support.tiny import make_tiny_llama

from .conftest import PASSAGES, QUESTION

FORMS = {
    "dense": [],
    "knorm-int4": [{"name": "knorm", "ratio": 0.3}, {"name": "quantize", "bits": 4, "group_size": 8}],
    "kvzip-int4": [{"name": "kvzip", "ratio": 0.6}, {"name": "quantize", "bits": 4, "group_size": 16}],
}
MORE = [
    "Water boils at 100 degrees Celsius at sea level, less on a mountain.",
    "The Amazon river carries more water than any other river on Earth.",
]


def _setup(model, tokenizer, form: str):
    gen = Generator.from_model(model, tokenizer, max_new_tokens=6)
    enc = ChunkEncoder.from_generator(gen)
    chunks = enc.encode(PASSAGES + MORE, [ragcompress.build(p) for p in FORMS[form]])
    prefix = PackedChunk.from_prefix(enc.prefix)
    question = list(tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    return gen, prefix, chunks, question


def _engine(model, **kw) -> FastGenerator:
    kw.setdefault("stream_group", 1)
    return FastGenerator(model, capacity=160, max_question=16, max_new_tokens=6, buckets=(16,), **kw)


def _context(fast: FastGenerator) -> tuple[torch.Tensor, torch.Tensor]:
    """The context as the question can read it: local sliding-window layers of slots too far back
    for their window are zeroed (a chunk written layer by layer leaves them out)."""
    buf = fast.buffer
    n = buf.ctx_len
    keys, values = buf.ctx_keys[:n].clone(), buf.ctx_values[:n].clone()
    if buf.local is not None:
        hidden = (buf.ctx_pos[:n] <= buf.next_position - buf.local.window)[:, None] & torch.tensor(
            [i in buf.local.local for i in range(buf.layers)]
        )
        keys[hidden], values[hidden] = 0, 0
    return keys, values


@pytest.fixture(scope="module")
def deep_llama(tokenizer):
    """Four layers, so layer groups of 1 and 3 split the model unevenly."""
    return make_tiny_llama(len(tokenizer), seed=5, num_hidden_layers=4)


def test_schedule_tapers_both_ends_and_covers_every_layer_once():
    assert schedule(32, 8) == [
        (0, 1),
        (1, 3),
        (3, 7),
        (7, 15),
        (15, 23),
        (23, 25),
        (25, 29),
        (29, 31),
        (31, 32),
    ]
    assert schedule(32, 32) == [(0, 32)] and schedule(4, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for layers in (1, 2, 5, 28, 32, 80):
        for group in (1, 2, 3, 4, 8, 16, 100):
            r = schedule(layers, group)
            assert r[0][0] == 0 and r[-1][1] == layers and all(a < b for a, b in r)
            assert all(r[i][1] == r[i + 1][0] for i in range(len(r) - 1))
            assert max(b - a for a, b in r) <= max(group, 1) or r == [(0, layers)]


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize(("streamer", "group"), [(HostStream, 1), (HostStream, 3), (DirectHostStream, 2)])
def test_host_chunks_give_the_device_chunks_context_and_tokens(deep_llama, tokenizer, form, streamer, group):
    gen, prefix, chunks, q = _setup(deep_llama, tokenizer, form)
    host = [HostChunk.from_chunk(c, torch.float32) for c in chunks]
    assert all(h.form.__class__.__name__ == ("DenseForm" if form == "dense" else "QuantForm") for h in host)
    device, streamed = _engine(deep_llama), _engine(deep_llama, stream_group=group, streamer=streamer)
    for order in ([0, 1, 2, 3, 4], [4, 2, 0], [4, 2, 0], [3, 1]):  # reordered, repeated, fewer
        want_pos = device.load(prefix, [chunks[i] for i in order])
        assert streamed.load_reusing(prefix, [host[i] for i in order]) == want_pos
        # the copies go out with the question step (the plan is flushed by the prefill)
        assert streamed.generate([q], 6, gen.stop_ids) == device.generate([q], 6, gen.stop_ids)
        torch.testing.assert_close(_context(streamed), _context(device), atol=0, rtol=0)


def test_a_streamed_load_replaced_before_its_prefill_is_not_taken_as_resident(deep_llama, tokenizer):
    """Load host chunks, load others, load the first ones again with reuse: the first load's
    plan never ran, so nothing of it may count as already in the buffer."""
    gen, prefix, chunks, q = _setup(deep_llama, tokenizer, "knorm-int4")
    host = [HostChunk.from_chunk(c, torch.float32) for c in chunks]
    device, streamed = _engine(deep_llama), _engine(deep_llama, stream_group=2)
    streamed.load(prefix, host[:3])
    streamed.load_reusing(prefix, host[:3])  # same objects, but the first plan was never flushed
    device.load(prefix, chunks[:3])
    assert streamed.generate([q], 6, gen.stop_ids) == device.generate([q], 6, gen.stop_ids)
    torch.testing.assert_close(_context(streamed), _context(device), atol=0, rtol=0)
    streamed.load(prefix, host[2:])
    streamed.load_reusing(prefix, [chunks[i] for i in (2, 3, 4)])  # device chunks replace the plan
    device.load(prefix, chunks[2:])
    assert streamed.generate([q], 6, gen.stop_ids) == device.generate([q], 6, gen.stop_ids)
    torch.testing.assert_close(_context(streamed), _context(device), atol=0, rtol=0)


def test_host_and_device_chunks_mix_in_one_request(deep_llama, tokenizer):
    gen, prefix, chunks, q = _setup(deep_llama, tokenizer, "knorm-int4")
    host = [HostChunk.from_chunk(c, torch.float32) for c in chunks]
    device, mixed = _engine(deep_llama), _engine(deep_llama, stream_group=2)
    device.load(prefix, chunks)
    mixed.load(prefix, [host[0], chunks[1], host[2], PackedChunk.from_chunk(chunks[3]), host[4]])
    assert mixed.generate([q], 6, gen.stop_ids) == device.generate([q], 6, gen.stop_ids)
    torch.testing.assert_close(_context(mixed), _context(device), atol=0, rtol=0)


def test_batched_questions_over_host_chunks_match_one_by_one(deep_llama, tokenizer):
    gen, prefix, chunks, q = _setup(deep_llama, tokenizer, "kvzip-int4")
    host = [HostChunk.from_chunk(c, torch.float32) for c in chunks]
    questions = [q, q[:3], list(reversed(q))]
    batched = _engine(deep_llama, max_batch=3, stream_group=2)
    batched.load(prefix, host)
    want = []
    for question in questions:
        one = _engine(deep_llama)
        one.load(prefix, chunks)
        want += one.generate([question], 6, gen.stop_ids)
    assert batched.generate(questions, 6, gen.stop_ids) == want


def test_host_chunks_match_the_eager_generator(tiny_llama, tokenizer):
    """The engine's answer from host chunks is the eager KV path's (assemble + decode)."""
    from ragcompress.kv.assemble import assemble

    gen, prefix, chunks, q = _setup(tiny_llama, tokenizer, "kvzip-int4")
    enc = ChunkEncoder.from_generator(gen)
    fast = _engine(tiny_llama)
    nxt = fast.load(prefix, [HostChunk.from_chunk(c, torch.float32) for c in chunks])
    cache, pos = assemble(enc.prefix, chunks, fast.rotary, tiny_llama.config)
    assert pos == nxt
    want = list(gen.decode(q, cache=cache, max_new_tokens=6, next_position=pos).token_ids)
    assert fast.generate([q], 6, gen.stop_ids)[0] == want


def test_write_batch_takes_host_chunks_without_streaming(deep_llama, tokenizer):
    """The plain writer copies a host chunk's layers over one by one: the same context."""
    _gen, prefix, chunks, _q = _setup(deep_llama, tokenizer, "kvzip-int4")
    host = [HostChunk.from_chunk(c, torch.float32) for c in chunks]
    streamed, plain = _engine(deep_llama), _engine(deep_llama)
    streamed.load(prefix, host)
    streamed._host.flush()  # what the next prefill would do first
    write_batch(plain.buffer, prefix, host, plain.rotary)
    torch.testing.assert_close(_context(plain), _context(streamed), atol=0, rtol=0)


def test_a_host_chunk_of_another_shape_is_refused_naming_it(deep_llama, tiny_llama, tokenizer):
    _gen, prefix, chunks, _q = _setup(tiny_llama, tokenizer, "dense")
    deep_prefix = _setup(deep_llama, tokenizer, "dense")[1]
    with pytest.raises(ValueError, match=r"chunk #0 has \(layers, kv_heads, head_dim\)"):
        _engine(deep_llama).load(deep_prefix, [HostChunk.from_chunk(chunks[0], torch.float32)])
    with pytest.raises(ValueError, match=r"chunk #1 holds torch\.bfloat16"):
        host = [
            HostChunk.from_chunk(c, dt)
            for c, dt in zip(chunks[:2], (torch.float32, torch.bfloat16), strict=True)
        ]
        _engine(tiny_llama).load(prefix, host)


@pytest.mark.gpu
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("streamer", [HostStream, DirectHostStream])
def test_gpu_pinned_host_chunks_stream_under_graphs_to_the_device_tokens(tokenizer, form, streamer):
    """bf16 on CUDA, chunks pinned on the host, the gated step captured as a CUDA graph: the
    context is bitwise the device chunks' (the same gather kernel) and so are the tokens."""
    model = make_tiny_llama(len(tokenizer), seed=5, num_hidden_layers=4).cuda().to(torch.bfloat16)
    gen, prefix, chunks, q = _setup(model, tokenizer, form)
    host = [HostChunk.from_chunk(c.to("cpu"), torch.bfloat16) for c in chunks]
    assert all(h.pinned for h in host)
    device, streamed = _engine(model, stream_group=4), _engine(model, stream_group=1, streamer=streamer)
    for order in ([0, 1, 2, 3, 4], [4, 2, 0], [4, 2, 0], [3, 1]):
        device.load(prefix, [chunks[i] for i in order])
        streamed.load_reusing(prefix, [host[i] for i in order])
        got = streamed.generate([q], 6, gen.stop_ids)
        assert got == device.generate([q], 6, gen.stop_ids)
        torch.testing.assert_close(_context(streamed), _context(device), atol=0, rtol=0)
    # a stored chunk left on the CPU streams too (packed on the way)
    streamed.load(prefix, [c.to("cpu") for c in chunks])
    device.load(prefix, chunks)
    assert streamed.generate([q], 6, gen.stop_ids) == device.generate([q], 6, gen.stop_ids)


@pytest.mark.gpu
@pytest.mark.parametrize("streamer", [HostStream, DirectHostStream])
def test_gpu_the_captured_step_waits_for_late_copies(tokenizer, streamer):
    """The side stream is held back (a GPU sleep queued before the copies) and the context is
    poisoned with NaN: a graph that did not wait on the range flags would read the poison."""
    model = make_tiny_llama(len(tokenizer), seed=5, num_hidden_layers=4).cuda().to(torch.bfloat16)
    gen, prefix, chunks, q = _setup(model, tokenizer, "kvzip-int4")
    host = [HostChunk.from_chunk(c.to("cpu"), torch.bfloat16) for c in chunks]
    device, streamed = _engine(model), _engine(model, stream_group=2, streamer=streamer)
    streamed.load(prefix, host[:2])
    streamed.generate([q], 2, gen.stop_ids)  # the gated graph is captured here
    device.load(prefix, chunks[::-1])
    want = device.generate([q], 6, gen.stop_ids)
    for _ in range(2):
        streamed.buffer.ctx_keys.fill_(float("nan"))
        with torch.cuda.stream(streamed._host.side):
            torch.cuda._sleep(200_000_000)  # ~0.1 s of the side stream before this request's copies
        streamed.load(prefix, host[::-1])
        assert streamed.generate([q], 6, gen.stop_ids) == want
        assert streamed._host.flags.tolist() == [1] * len(streamed._host.ranges)  # set, not timed out
    assert not torch.isnan(_context(streamed)[0]).any()


@pytest.mark.parametrize("form", ["dense", "knorm-int4"])
def test_host_chunks_on_a_windowed_family_keep_slot_positions(tokenizer, form):
    """Gemma 3 (local layers with their own RoPE table, a window shorter than the context): host
    chunks are written with the device chunks (per-layer tables do not stream yet) and carry the
    positions an evicting press kept, so the windowed attention sees what the device chunks give."""
    from tests.support.tiny import make_tiny_gemma3

    model = make_tiny_gemma3(len(tokenizer), seed=3)
    gen, prefix, chunks, q = _setup(model, tokenizer, form)
    host = [HostChunk.from_chunk(c, torch.float32) for c in chunks]
    assert (form == "dense") == all(h.positions is None for h in host)
    device, streamed = _engine(model), _engine(model, stream_group=2)
    for order in ([0, 1, 2, 3, 4], [4, 2, 0]):
        want = device.load(prefix, [chunks[i] for i in order])
        assert streamed.load(prefix, [host[i] for i in order]) == want
        n = device.buffer.ctx_len
        assert torch.equal(streamed.buffer.ctx_pos[:n], device.buffer.ctx_pos[:n])
        assert streamed.generate([q], 6, gen.stop_ids) == device.generate([q], 6, gen.stop_ids)
        torch.testing.assert_close(_context(streamed), _context(device), atol=0, rtol=0)
