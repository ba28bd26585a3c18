"""The GPU fast path (ragcompress.kv.fast): same greedy tokens as the eager generator, static
buffer bounds, and (on CUDA) kernels against their torch references. The CPU tests run the
same static-buffer code eagerly; the ``gpu`` ones add CUDA graphs, flash and Triton."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.fast import (
    BufferChunk,
    BufferOverflowError,
    FastGenerator,
    PackedChunk,
    StaticKVBuffer,
    StoredChunk,
    write_chunk,
)
from ragcompress.kv.fast.rows import GatherRows
from ragcompress.models.compat import cache_kwargs
from tests.conftest import make_tiny_llama
from tests.support.interpret import run_interpreted


def _layers_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]


def _prefill(model, ids: list[int]):
    from transformers import DynamicCache

    # no config: a sliding-window family's local layers would keep only their last window - 1
    # slots; the fast path's chunks keep every token (the window is applied at attention)
    cache = DynamicCache()
    with torch.inference_mode():
        model(
            input_ids=torch.tensor([ids], device=model.device), **cache_kwargs(model, cache), use_cache=True
        )
    return cache


def _ids(rng: torch.Generator, n: int, vocab: int) -> list[int]:
    return torch.randint(100, vocab, (n,), generator=rng).tolist()


def _split(model, prefix: list[int], passages: list[list[int]]) -> tuple[PackedChunk, list[PackedChunk]]:
    """Chunks cut out of one joint prefill: every delta is 0, so the context is exactly eager's."""
    kv = _layers_kv(_prefill(model, prefix + [t for p in passages for t in p]))
    pre = PackedChunk.from_layers(
        [k[:, : len(prefix)] for k, _ in kv], [v[:, : len(prefix)] for _, v in kv], len(prefix), 0
    )
    chunks, start = [], len(prefix)
    for p in passages:
        sl = slice(start, start + len(p))
        chunks.append(
            PackedChunk.from_layers([k[:, sl] for k, _ in kv], [v[:, sl] for _, v in kv], len(p), start)
        )
        start += len(p)
    return pre, chunks


def sample_request(vocab: int) -> tuple[list[int], list[list[int]], list[int]]:
    """Seeded prefix (9 tokens), passages (17, 5 and 23) and a question (6): the fast-path tests'
    request."""
    rng = torch.Generator().manual_seed(7)
    prefix = _ids(rng, 9, vocab)
    passages = [_ids(rng, n, vocab) for n in (17, 5, 23)]
    return prefix, passages, _ids(rng, 6, vocab)


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=3)
    gen = Generator.from_model(model, tokenizer, max_new_tokens=8)
    rng = torch.Generator().manual_seed(7)
    prefix = _ids(rng, 9, len(tokenizer))
    passages = [_ids(rng, n, len(tokenizer)) for n in (17, 5, 23)]
    questions = [_ids(rng, n, len(tokenizer)) for n in (6, 11, 3)]
    return model, gen, prefix, passages, questions


def _eager(gen: Generator, prefix, passages, question, n: int = 8) -> list[int]:
    ctx = prefix + [t for p in passages for t in p]
    return list(gen.decode(question, cache=_prefill(gen.lm, ctx), max_new_tokens=n).token_ids)


def test_same_greedy_tokens_as_eager_decode(setup):
    model, gen, prefix, passages, questions = setup
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8, buckets=(8, 16))
    pre, chunks = _split(model, prefix, passages)
    assert fast.load(pre, chunks) == len(prefix) + sum(map(len, passages))
    for q in questions:
        want = _eager(gen, prefix, passages, q)
        assert fast.generate([q], 8, gen.stop_ids)[0] == want
        # and the cached path equals a fresh prefill of the whole prompt
        ctx = prefix + [t for p in passages for t in p]
        assert list(gen.decode(ctx + q, cache=None, max_new_tokens=8).token_ids) == want


def test_a_one_token_question_shares_the_decode_steps_shape(setup):
    # bucket 1: the prefill runs on the (1, 1) shape, whose host values start after the input
    # token (a decode step's token comes from the device), so its ids take the other path
    model, gen, prefix, passages, questions = setup
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8, buckets=(1, 16))
    fast.load(*_split(model, prefix, passages))
    for q in ([questions[0][0]], [questions[1][0]], questions[2]):
        assert fast.generate([q], 8, gen.stop_ids)[0] == _eager(gen, prefix, passages, q)


def test_batched_questions_match_one_by_one(setup):
    model, gen, prefix, passages, questions = setup
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8, max_batch=4, buckets=(16,))
    fast.load(*_split(model, prefix, passages))
    batched = fast.generate(questions, 8, gen.stop_ids)
    assert batched == [_eager(gen, prefix, passages, q) for q in questions]


def _separate_chunks(model, prefix, passages, presses=()):
    """Each passage encoded on its own after the prefix (passage #1 with half its tokens
    evicted), then ``presses`` applied layer by layer, as the chunk cache stores them."""
    from ragcompress.kv.chunk import DenseLayer, KVChunk
    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.prefix import PrefixKV

    pkv = _layers_kv(_prefill(model, prefix))
    prefix_kv = PrefixKV(tuple(prefix), [k for k, _ in pkv], [v for _, v in pkv], "m", "l")
    chunks = []
    for i, p in enumerate(passages):
        kv = [(k[:, len(prefix) :], v[:, len(prefix) :]) for k, v in _layers_kv(_prefill(model, prefix + p))]
        dev = model.device
        keep = torch.arange(0, len(p), 2, device=dev) if i == 1 else torch.arange(len(p), device=dev)
        layers = []
        for li, (k, v) in enumerate(kv):
            pos = (len(prefix) + keep).expand(k.shape[0], -1)
            layer = DenseLayer(k[:, keep].contiguous(), v[:, keep].contiguous(), pos.contiguous())
            for press in presses:
                layer = press(layer, layer_idx=li, attn=None)
            layers.append(layer)
        key = ChunkKey(model="m", layout="l", presses="[]", tokens=str(i))
        chunks.append(KVChunk(layers, torch.tensor(p, device=dev), len(prefix), len(p), key, "m"))
    return prefix_kv, chunks


@pytest.mark.parametrize("form", ["dense", "dense-layers", "quantized-packed", "quantized-layers"])
def test_rerotated_evicted_quantized_chunks_match_assemble(setup, form):
    """Separately encoded chunks (one evicted by half; int4 for the quantized forms): the fast
    path must agree with the KV path's eager assembly (rerotation + spans + dequantization)."""
    from ragcompress.kv.assemble import assemble
    from ragcompress.kv.fast import QuantizedPackedChunk
    from ragcompress.kv.presses.knorm import KnormPress
    from ragcompress.kv.presses.quantize import QuantizePress

    model, gen, prefix, passages, questions = setup
    presses = (
        () if form.startswith("dense") else (KnormPress(ratio=0.25), QuantizePress(bits=4, group_size=8))
    )
    prefix_kv, chunks = _separate_chunks(model, prefix, passages, presses)
    pack = {
        "dense": PackedChunk.from_chunk,
        "dense-layers": lambda c: c,  # stored KVChunks, written layer by layer
        "quantized-packed": QuantizedPackedChunk.from_chunk,
        "quantized-layers": lambda c: c,
    }[form]
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8)
    nxt = fast.load(PackedChunk.from_prefix(prefix_kv), [pack(c) for c in chunks])
    for q in questions[:2]:
        cache, pos = assemble(prefix_kv, chunks, fast.rotary, model.config)
        assert pos == nxt
        want = list(gen.decode(q, cache=cache, max_new_tokens=8, next_position=pos).token_ids)
        assert fast.generate([q], 8, gen.stop_ids)[0] == want


def test_buffer_bounds_raise_before_writing(setup):
    model, _gen, prefix, passages, questions = setup
    pre, chunks = _split(model, prefix, passages)
    fast = FastGenerator(model, capacity=30, max_question=8, max_new_tokens=4, max_batch=2)
    with pytest.raises(BufferOverflowError, match="context slots"):
        fast.load(pre, chunks)
    snapshot = fast.buffer.ctx_keys.clone()
    buf = fast.buffer
    buf.reset()
    write_chunk(buf, pre, fast.rotary, "prefix")
    write_chunk(buf, chunks[0], fast.rotary)
    with pytest.raises(BufferOverflowError, match="chunk"):
        write_chunk(buf, chunks[2], fast.rotary)
    assert torch.equal(buf.ctx_keys[26:], snapshot[26:])  # nothing past the fit was touched
    fast.load(pre, chunks[:1])
    with pytest.raises(BufferOverflowError, match="max_question"):
        fast.prefill([questions[1]])
    with pytest.raises(BufferOverflowError, match="3 questions"):
        fast.prefill([[1, 2]] * 3)
    with pytest.raises(BufferOverflowError, match="max_new_tokens"):
        fast.generate([[1, 2]], max_new_tokens=5)
    with pytest.raises(ValueError, match="head_dim"):
        StaticKVBuffer(2, 2, 0, 8, 8)


def test_write_rerotates_keys_and_copies_values(setup):
    model = setup[0]
    fast = FastGenerator(model, capacity=40, max_question=8, max_new_tokens=4)
    k = torch.randn(7, 2, 2, 16)
    chunk = PackedChunk(k, torch.randn_like(k), length=9, base_offset=4)
    b = StaticKVBuffer(2, 2, 16, 40, 4)
    b.ctx_keys.fill_(float("nan"))
    b.reserve(3, 5)
    assert write_chunk(b, chunk, fast.rotary) == 3
    assert b.next_position == 14 and b.ctx_len == 10
    # a key moved by +1 equals the same key re-encoded one position later (rotations compose)
    from ragcompress.models.rope import rerotate

    assert torch.allclose(b.ctx_keys[3:10], rerotate(k, 1, fast.rotary), atol=1e-6)
    assert torch.equal(b.ctx_values[3:10], chunk.values)
    assert b.ctx_keys[:3].isnan().all() and b.ctx_keys[10:].isnan().all()  # nothing else written


def gathered(buffer: StaticKVBuffer, items) -> GatherRows:
    """The rows write_batch would gather for ``items`` [(what, chunk)] (stored KVChunks too)."""
    rows = GatherRows(buffer)
    for what, c in items:
        c = c if isinstance(c, BufferChunk) else StoredChunk.of(c)
        c.check(buffer, what)
        slot, pos = buffer.reserve(c.num_tokens, c.length, what)
        c.gather_into(rows, slot, pos - c.base_offset)
    return rows


def mixed_chunks(model, prefix, passages):
    """Every chunk form the buffer takes: packed dense, packed int4 (knorm-evicted), stored
    dense and stored int4 KVChunks, at moved positions; one chunk evicted by half."""
    from ragcompress.kv.fast import QuantizedPackedChunk
    from ragcompress.kv.presses.knorm import KnormPress
    from ragcompress.kv.presses.quantize import QuantizePress

    prefix_kv, dense = _separate_chunks(model, prefix, passages)
    _, quant = _separate_chunks(model, prefix, passages, (KnormPress(ratio=0.25), QuantizePress(4, 8)))
    chunks = [PackedChunk.from_chunk(dense[0]), QuantizedPackedChunk.from_chunk(quant[1]), dense[2]]
    chunks += [quant[0], QuantizedPackedChunk.from_chunk(quant[2]), PackedChunk.from_chunk(dense[1])]
    return [("prefix", PackedChunk.from_prefix(prefix_kv))] + [
        (f"chunk #{i}", c) for i, c in enumerate(chunks)
    ]


def _interpreted(name: str):
    """A private copy of a fast-path Triton module, decorated under TRITON_INTERPRET=1 (the
    caller sets it) so that the kernels run on the CPU; the real module stays compiled."""
    import importlib.util
    from pathlib import Path

    import ragcompress.kv.fast as fast_pkg

    path = Path(fast_pkg.__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_interpreted_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("even_rows", [4096, 8], ids=["entries-whole", "long-entries-cut"])
def test_gather_kernel_matches_the_torch_reference(setup, monkeypatch, even_rows):
    """The gather kernels (Triton interpreter) == gather_reference for every chunk form in one
    request (packed/stored, dense/int4, moved positions, evictions): every slot, none past; also
    with the packed entries cut to the stored layers' length (``rows.even_entries``)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from ragcompress.kv.fast import rows as rows_mod
    from ragcompress.kv.fast.write import gather

    monkeypatch.setattr(rows_mod, "EVEN_ROWS", even_rows)
    model, _gen, prefix, passages, _q = setup
    kernels = _interpreted("_gather")
    items = mixed_chunks(model, prefix, passages)
    fast = FastGenerator(model, capacity=128, max_question=8, max_new_tokens=4)
    shape = (fast.buffer.layers, fast.buffer.kv_heads, fast.buffer.head_dim)
    got, ref = (StaticKVBuffer(*shape, capacity=128, region=4) for _ in "ab")
    for b in (got, ref):
        b.ctx_keys.fill_(float("nan"))
        b.ctx_values.fill_(float("nan"))
    rows = gathered(got, items)
    table = rows.dense_table()
    entries = len(rows.dense) + sum(len(b.layers) for b in rows.blocks)
    assert table is not None and (table[0].shape[0] > entries) == (even_rows == 8)
    gather(rows, fast.rotary, kernels=kernels)
    gather(gathered(ref, items), fast.rotary)  # on the CPU: the torch reference
    assert (got.ctx_len, got.next_position) == (ref.ctx_len, ref.next_position)
    n = ref.ctx_len
    for x, y in ((got.ctx_keys, ref.ctx_keys), (got.ctx_values, ref.ctx_values)):
        assert not x[:n].isnan().any() and x[n:].isnan().all()  # every slot written, none past
        torch.testing.assert_close(x[:n], y[:n], atol=2e-5, rtol=1e-5)


_MERGE_CHECK = """
import sys

import torch

from ragcompress.kv.fast._merge import merge_with_own
from ragcompress.kv.fast.attention import _merge_torch, own_pass_reference
from ragcompress.kv.fast.step_meta import StepMeta

g = torch.Generator().manual_seed(5)
s, b, t, kvh, grp, d, region = 3, 2, 3, 2, 4, 16, 70  # a region over one 64-slot tile
n, h = b * t, kvh * grp
o_a = torch.randn(s * n * grp, kvh, d, generator=g)
lse_a = torch.randn(s, kvh, n * grp, generator=g) * 3
used = torch.tensor([5, 0, 7], dtype=torch.int32)
o_a.view(s, -1)[1] = 0  # an empty segment, as flash leaves it: 0 / +inf
lse_a[1] = float("inf")
q = torch.randn(n, h, d, generator=g)
own_k, own_v = (torch.randn(b * region + 4, kvh, d, generator=g) for _ in "kv")
# question 0 fills its 3 query slots after 66 answer slots (its keys cross a tile); question 1
# uses 2 of its 3 (a padded row that sees no own slot)
q_used = torch.tensor([69, 2], dtype=torch.int32)
meta = StepMeta(b, t, region, 64, torch.zeros(1, dtype=torch.int32), q_used, splits=s, group=grp)
meta.ctx_used.copy_(used)
window = None if sys.argv[2] == "global" else 4
layout = sys.argv[1]
if layout == "flat":  # (heads, total rows), the other layout a context pass returns
    lse_a = lse_a.permute(1, 0, 2).reshape(kvh, -1)
o_b, lse_b = own_pass_reference(q, own_k, own_v, meta, 0.3, window)
want = _merge_torch(o_a, lse_a, o_b, lse_b.t(), meta, n, h, grp, kvh, d)  # lse as (heads, N)
# slots no query sees hold NaN (never written: room for the answer), and so does the empty
# segment's partial: neither may weigh in the output
for x in (own_k, own_v):
    x[69:region] = float("nan")
    x[region + 2 :] = float("nan")
o_a.view(s, -1)[1] = float("nan")
got = merge_with_own(o_a, lse_a, used, q, own_k, own_v, meta, 0.3, window)
# row 3 (question 1, token 0) is padding: no own slot, the context alone
torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
assert torch.isfinite(got).all()
"""


@pytest.mark.parametrize("window", ["global", "window"])
@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_fused_own_pass_and_merge_match_torch(layout, window):
    """The one-kernel own pass + log-sum-exp merge == the torch own pass and merge: an empty
    context segment, both lse layouts, an own region longer than one tile, a padded query row,
    a local window, NaN in every slot and segment nothing may weigh. In a fresh
    interpreter process: Triton's reductions only run interpreted when TRITON_INTERPRET=1 is
    set before triton is first imported."""
    run_interpreted(_MERGE_CHECK, layout, window)
