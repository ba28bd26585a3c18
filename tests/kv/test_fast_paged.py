"""Zero-copy placement (ragcompress.kv.fast.paged*, pool): the paged engine answers as the copy
engine and the eager path do, the pool evicts least-recently-used chunks and never lets a live
request's blocks go, and the paged attention kernel (Triton interpreter) matches its torch
reference. tests/gpu/test_fast_paged_gpu.py runs it compiled, in graphs, in bf16."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.fast import FastGenerator, HostChunk, PackedChunk
from ragcompress.kv.fast.paged import BlockTable, paged_context_reference
from ragcompress.kv.fast.paged_engine import PagedFastGenerator, table_rows
from ragcompress.kv.fast.pool import ChunkPool, PoolFullError
from ragcompress.models.arch import UnsupportedModelError
from tests.conftest import make_tiny_llama
from tests.support.interpret import run_interpreted

from .test_fast_path import _ids, _separate_chunks

ORDERS = ([0, 1, 2], [2, 0, 1], [1, 1, 0], [2])  # reordered, a chunk twice, a subset


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=3)
    gen = Generator.from_model(model, tokenizer, max_new_tokens=8)
    rng = torch.Generator().manual_seed(7)
    prefix = _ids(rng, 9, len(tokenizer))
    passages = [_ids(rng, n, len(tokenizer)) for n in (17, 5, 23)]
    questions = [_ids(rng, n, len(tokenizer)) for n in (6, 11, 3)]
    return model, gen, prefix, passages, questions


def _engines(model, pool_tokens: int = 256, block_size: int = 4):
    kw: dict[str, Any] = {"capacity": 80, "max_question": 16, "max_new_tokens": 8, "buckets": (8, 16)}
    pool = ChunkPool.for_model(model, pool_tokens, block_size)
    return FastGenerator(model, **kw), PagedFastGenerator(model, pool=pool, **kw)


@pytest.mark.parametrize("form", ["packed", "stored", "stored-knorm-int4", "host", "host-knorm-int4"])
def test_paged_engine_gives_the_copy_and_eager_tokens(setup, form):
    """Separately encoded chunks (one evicted by half), placed in several orders, one twice: the
    paged engine's greedy tokens are the copy engine's and the eager assembly's; quantized
    stored chunks (expanded when they enter the pool) are the copy engine's; chunks from the
    host tier (HostChunk: dense, or int4 codes crossing as stored) likewise."""
    from ragcompress.kv.assemble import assemble
    from ragcompress.kv.presses.knorm import KnormPress
    from ragcompress.kv.presses.quantize import QuantizePress

    model, gen, prefix, passages, questions = setup
    presses = (KnormPress(ratio=0.25), QuantizePress(bits=4, group_size=8)) if "int4" in form else ()
    prefix_kv, chunks = _separate_chunks(model, prefix, passages, presses)
    items: list[Any] = [PackedChunk.from_chunk(c) for c in chunks] if form == "packed" else list(chunks)
    if form.startswith("host"):
        items = [HostChunk.from_chunk(c, torch.float32, pin=False) for c in chunks]
    pre = PackedChunk.from_prefix(prefix_kv)
    copy, paged = _engines(model)
    for order in ORDERS:
        picked = [items[i] for i in order]
        assert paged.load(pre, picked) == copy.load(pre, picked)
        for q in questions[:2]:
            want = copy.generate([q], 8, gen.stop_ids)[0]
            assert paged.generate([q], 8, gen.stop_ids)[0] == want
            if not presses:
                cache, pos = assemble(prefix_kv, [chunks[i] for i in order], copy.rotary, model.config)
                eager = gen.decode(q, cache=cache, max_new_tokens=8, next_position=pos)
                assert list(eager.token_ids) == want
    assert paged.pool is not None
    # each distinct chunk entered the pool once: blocks = prefix + the three chunks
    used = paged.pool.num_blocks - paged.pool.free_blocks
    assert used == sum(-(-c.num_tokens // 4) for c in [pre, *chunks])


def test_batched_questions_match_one_by_one(setup):
    model, gen, prefix, passages, questions = setup
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pool = ChunkPool.for_model(model, 256, 4)
    paged = PagedFastGenerator(
        model, capacity=80, max_question=16, max_new_tokens=8, max_batch=3, buckets=(16,), pool=pool
    )
    paged.load(PackedChunk.from_prefix(prefix_kv), chunks)
    batched = paged.generate(questions, 8, gen.stop_ids)
    assert batched == [paged.generate([q], 8, gen.stop_ids)[0] for q in questions]


def _chunk(n: int, seed: int, layers: int = 2, kvh: int = 2, d: int = 16) -> PackedChunk:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, layers, kvh, d, generator=g)
    return PackedChunk(k, torch.randn(n, layers, kvh, d, generator=g), length=n, base_offset=5)


def _pool(blocks: int) -> ChunkPool:
    return ChunkPool(layers=2, kv_heads=2, head_dim=16, num_blocks=blocks, block_size=4)


def test_pool_evicts_least_recently_used_unleased_chunks():
    pool = _pool(6)
    a, b, c, d = _chunk(8, 1), _chunk(4, 2), _chunk(8, 3), _chunk(12, 4)
    for x in (a, b, c):  # 2 + 1 + 2 blocks, each request over before the next
        pool.release(pool.acquire([x]))
    pool.release(pool.acquire([a]))  # a is now the most recent; b the least
    lease = pool.acquire([d])  # needs 3 blocks, 1 free: b goes, then c (a is newer)
    assert pool.resident(b) is None and pool.resident(c) is None and pool.resident(a) is not None
    e = lease.entries[0]
    slots = [blk * 4 + i for blk in e.blocks for i in range(4)]
    assert torch.equal(pool.keys[slots], d.keys) and torch.equal(pool.values[slots], d.values)
    assert pool.free_blocks == 1


def test_pool_never_gives_a_leased_block_to_another_chunk():
    pool = _pool(5)
    a, b, c = _chunk(12, 1), _chunk(8, 2), _chunk(8, 3)
    held = pool.acquire([a])  # 3 blocks, a live request
    ea = held.entries[0]
    before = pool.keys.clone()
    with pytest.raises(PoolFullError, match="held by live requests"):
        pool.acquire([b, c])  # 4 blocks, 2 free: refused whole
    assert pool.free_blocks == 2 and pool.resident(b) is None  # all or nothing
    lb = pool.acquire([b])
    pool.release(lb)
    lc = pool.acquire([c])  # evicts b (unleased), never a
    assert set(lc.entries[0].blocks).isdisjoint(ea.blocks)
    slots = [blk * 4 + i for blk in ea.blocks for i in range(4)]
    assert torch.equal(pool.keys[slots], before[slots])  # a's bytes untouched under pressure
    # two live requests share a chunk: both hold it, it stays while either does
    other = pool.acquire([a, a])
    pool.release(held)
    with pytest.raises(PoolFullError):
        pool.acquire([_chunk(12, 9)])
    pool.release(other)
    pool.release(lc)
    pool.acquire([_chunk(12, 9)])  # now a may go
    assert pool.resident(a) is None


def test_stored_chunks_hit_by_key_and_packed_ones_by_identity(setup):
    """A stored chunk fetched again (a new KVChunk object, the same ChunkKey) is found in the pool
    and not copied again; a packed chunk is known by identity only (an equal copy is another)."""
    model, _gen, prefix, passages, _q = setup
    _, first = _separate_chunks(model, prefix, passages)
    _, again = _separate_chunks(model, prefix, passages)
    pool = ChunkPool.for_model(model, 256, 4)
    lease = pool.acquire(first)
    free = pool.free_blocks
    pool.release(pool.acquire(again))
    assert pool.free_blocks == free and pool.resident(again[0]) is lease.entries[0]
    packed = PackedChunk.from_chunk(first[0])
    twin = PackedChunk(packed.keys.clone(), packed.values.clone(), packed.length, packed.base_offset)
    pool.acquire([packed, twin, packed])
    assert pool.free_blocks == free - 2 * -(-packed.num_tokens // 4)


def test_a_reused_identity_is_a_miss_and_the_old_blocks_stay_leased():
    """A packed chunk whose id another object takes (after the first died) is a miss; the old
    entry keeps its blocks while a lease holds them and is evicted like any other after."""
    pool = _pool(6)
    a, b = _chunk(8, 1), _chunk(4, 2)
    held = pool.acquire([a])
    real = pool._key
    pool._key = lambda c: real(a) if c is b else real(c)  # type: ignore[method-assign]  # b takes a's id
    lb = pool.acquire([b])
    (ea,), (eb,) = held.entries, lb.entries
    assert eb is not ea and set(eb.blocks).isdisjoint(ea.blocks)
    assert torch.equal(pool.keys[eb.blocks[0] * 4 : eb.blocks[0] * 4 + 4], b.keys)
    pool.release(lb)
    pool.release(held)
    pool.acquire([_chunk(24, 3)])  # all 6 blocks: both old entries must go
    assert pool.free_blocks == 0 and pool.resident(b) is None


def test_generators_sharing_a_pool_keep_each_others_chunks(setup):
    """A generator's loaded request keeps its blocks while another fills the pool: it still
    answers the same; the other is refused rather than given those blocks."""
    model, gen, prefix, passages, questions = setup
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pre = PackedChunk.from_prefix(prefix_kv)
    pool = ChunkPool.for_model(model, 4 * 16, 4)  # 16 blocks; the request needs 3 + 5 + 2 + 6
    kw: dict[str, Any] = {
        "capacity": 80,
        "max_question": 16,
        "max_new_tokens": 8,
        "buckets": (16,),
        "pool": pool,
    }
    a, b = PagedFastGenerator(model, **kw), PagedFastGenerator(model, **kw)
    a.load(pre, chunks)
    want = a.generate([questions[0]], 8, gen.stop_ids)
    with pytest.raises(PoolFullError):
        b.load(pre, [_other_chunk(model, 24)])
    b.load(pre, [chunks[2]])  # shared chunks are read in place by both
    assert a.generate([questions[0]], 8, gen.stop_ids) == want
    a.release()
    b.load(pre, [_other_chunk(model, 24)])  # a's chunks #0 and #1 may go now
    assert pool.resident(chunks[0]) is None


def _other_chunk(model, n: int) -> PackedChunk:
    c = model.config
    return _chunk(n, 11, c.num_hidden_layers, c.num_key_value_heads, c.hidden_size // c.num_attention_heads)


def test_paged_placement_refuses_what_it_cannot_read(setup, tokenizer):
    from ragcompress.kv.fast import QuantizedPackedChunk
    from ragcompress.kv.presses.quantize import QuantizePress
    from tests.support.tiny import make_tiny_gemma3

    model, _gen, prefix, passages, _q = setup
    prefix_kv, chunks = _separate_chunks(model, prefix, passages, (QuantizePress(bits=4, group_size=8),))
    _copy, paged = _engines(model)
    pre = PackedChunk.from_prefix(prefix_kv)
    with pytest.raises(ValueError, match="QuantizedPackedChunk"):
        paged.load(pre, [QuantizedPackedChunk.from_chunk(chunks[0])])
    with pytest.raises(ValueError, match="ape, blend"):
        paged.load_context([], 0)
    with pytest.raises(ValueError, match="capacity=80"):
        paged.load(pre, chunks * 3)
    with pytest.raises(ValueError, match="head_dim"):
        paged.load(pre, [_chunk(4, 1, layers=1)])
    gemma = make_tiny_gemma3(len(tokenizer), seed=1)
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        PagedFastGenerator(gemma, capacity=32, pool=ChunkPool.for_model(gemma, 64, 4))


def test_block_table_bounds():
    t = BlockTable(3)
    t.write([(0, 4, 1), (2, 1, -3)])
    assert t.rows[:3].tolist() == [[2, 0, 0], [0, 4, 1], [2, 1, -3]]
    t.write(np.array([[5, 2, 7]], dtype=np.int32))  # an array of rows is the same rows
    assert t.rows[:2].tolist() == [[1, 0, 0], [5, 2, 7]]
    with pytest.raises(ValueError, match="max_blocks=3"):
        t.write([(0, 1, 0)] * 4)


def test_table_rows_list_every_block_with_its_fill_and_delta():
    """A request's rows come from each entry's cached ``[block, used]`` rows: every block of a
    chunk in token order, the last one partly filled, the item's delta beside each (a chunk
    placed twice listed twice, with each place's delta)."""
    pool = _pool(8)
    a, b = _chunk(10, 1), _chunk(4, 2)  # 3 blocks (4, 4, 2), 1 block (4)
    lease = pool.acquire([a, b, a])
    ea, eb = lease.entries[0], lease.entries[1]
    rows = table_rows(list(enumerate(lease.entries)), [-5, 5, 9])
    want = [(blk, used, -5) for blk, used in zip(ea.blocks, (4, 4, 2), strict=True)]
    want += [(eb.blocks[0], 4, 5)]
    want += [(blk, used, 9) for blk, used in zip(ea.blocks, (4, 4, 2), strict=True)]
    assert rows.dtype == np.int32 and [tuple(r) for r in rows.tolist()] == want
    assert table_rows([], []).shape == (0, 3)


def test_a_resident_chunk_is_leased_again_and_a_bad_new_one_refused():
    """Placement skips the shape check for the very object already resident (it was checked
    when it entered) and still refuses a new chunk the pool cannot hold, changing nothing."""
    pool = _pool(8)
    a = _chunk(8, 1)
    pool.release(pool.acquire([a]))
    lease = pool.acquire([a, a])
    assert lease.entries[0] is lease.entries[1] and lease.entries[0].refs == 1
    free = pool.free_blocks
    with pytest.raises(ValueError, match="layers, kv_heads, head_dim"):
        pool.acquire([a, _chunk(4, 2, kvh=3)])
    assert pool.free_blocks == free and lease.entries[0].refs == 1


def test_paged_reference_equals_softmax_over_rerotated_keys():
    """The reference (queries rotated by -delta per block) == attention over the same keys
    re-rotated by +delta (the copy path's construction), repeated and partly filled blocks."""
    from ragcompress.models.rope import rotate

    g = torch.Generator().manual_seed(2)
    bs, kvh, grp, d, n = 4, 2, 3, 16, 5
    pool_k, pool_v = (torch.randn(6 * bs, kvh, d, generator=g) for _ in range(2))
    q = torch.randn(n, kvh * grp, d, generator=g)
    inv = 1.0 / (1e4 ** (torch.arange(0, d, 2).float() / d))
    entries = [(3, 4, 40), (0, 2, -3), (3, 4, 1000), (5, 1, 0)]
    table = torch.tensor([(len(entries), 0, 0), *entries, (1, 4, 9)], dtype=torch.int32)  # last: past count
    o, lse = paged_context_reference(q, pool_k, pool_v, table, inv, bs, d**-0.5)
    keys = torch.cat([rotate(pool_k[b * bs : b * bs + u], torch.tensor(dl), inv) for b, u, dl in entries])
    vals = torch.cat([pool_v[b * bs : b * bs + u] for b, u, _ in entries])
    s = torch.einsum("nhd,shd->nhs", q, keys.repeat_interleave(grp, 1)) * d**-0.5
    torch.testing.assert_close(lse, torch.logsumexp(s, -1), atol=1e-5, rtol=1e-5)
    want = torch.einsum("nhs,shd->nhd", torch.softmax(s, -1), vals.repeat_interleave(grp, 1))
    torch.testing.assert_close(o, want, atol=1e-5, rtol=1e-5)


_KERNEL_CHECK = """
import torch
from tests.support.partials import check_partials
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.paged import paged_context_reference

g = torch.Generator().manual_seed(3)
bs, blocks, layers, kvh, grp, d, n = 16, 6, 2, 2, 2, 32, 5
pool_k, pool_v = (torch.randn(blocks * bs, layers, kvh, d, generator=g) for _ in range(2))
q = torch.randn(n, kvh * grp, d, generator=g)
inv = 1.0 / (1e4 ** (torch.arange(0, d, 2).float() / d))
# a three-block chunk at one delta (split across programs at 4 splits: a split's first entry
# rotates even when its delta equals the one before), a block read twice at two deltas, partly
# filled blocks
entries = [(3, 16, 40), (1, 16, 40), (0, 7, 40), (3, 16, 1000), (5, 1, 0), (2, 12, 77)]
table = torch.full((9, 3), 999, dtype=torch.int32)  # rows past the count hold garbage
table[0] = torch.tensor([len(entries), 0, 0])
table[1 : 1 + len(entries)] = torch.tensor(entries, dtype=torch.int32)
k, v = pool_k[:, 1], pool_v[:, 1]  # a layer's strided view, as the step passes it
ro, rl = paged_context_reference(q, k, v, table, inv, bs, d**-0.5)
for splits in (1, 4, 7):
    o, lse = check_partials(*paged_context(q, k, v, table, inv, bs, splits, d**-0.5), splits, kvh, ro, rl)
    if splits == 7:  # ceil(6 / 7) = 1 entry per split: split 6 is empty
        assert torch.isinf(lse[6:]).all() and (o[6:] == 0).all()
    print("splits", splits, "match")
table[0, 0] = 0
o, lse = paged_context(q, k, v, table, inv, bs, 2, d**-0.5)
assert torch.isinf(lse).all() and (o == 0).all()
print("empty table")
"""


def test_paged_kernel_matches_the_torch_reference():
    """The paged context kernel (Triton, interpreted) == paged_context_reference: a chunk of
    several blocks (rotated once, also where a split starts inside it), a block read twice at
    different deltas, partly filled blocks, garbage rows past the count, empty splits, an empty
    table. In a fresh process: Triton's reductions only run interpreted when
    TRITON_INTERPRET=1 is set before triton is first imported."""
    out = run_interpreted(_KERNEL_CHECK)
    assert out.splitlines() == ["splits 1 match", "splits 4 match", "splits 7 match", "empty table"]


def test_tilings_fill_one_wave():
    """A context pass's split count gives each SM ``per_sm`` programs (a partial second wave
    cost 1.5x on an H200), never more splits than table rows, never fewer than one; the paged
    pass runs two 64-row programs an SM, the contiguous one one 128-row program."""
    from ragcompress.kv.fast.waves import CONTIGUOUS, PAGED, Tiling

    assert CONTIGUOUS.splits(132, 32 * 4, 8, 4096) == 16  # Llama-3-8B: 8 KV heads x 1 program
    assert CONTIGUOUS.splits(132, 32 * 7, 4, 4096) == 16  # Qwen2.5-7B: 224 rows, 2 programs a head
    assert PAGED.splits(132, 32 * 4, 8, 4096) == 16  # 8 heads x 2 programs of 64 rows, 2 an SM
    assert PAGED.splits(132, 32 * 7, 4, 4096) == 16  # 4 heads x 4 programs of 64 rows
    assert PAGED.block_m(32 * 7) == 64 and Tiling.warps(64) == 4 and CONTIGUOUS.block_m(224) == 128
    assert CONTIGUOUS.block_m(48) == 64  # a short fold never holds a 128-row program
    assert CONTIGUOUS.splits(132, 32 * 4, 8, 5) == 5
    assert PAGED.splits(4, 32 * 4, 8, 4096) == 1
    # a ragged batch: each question's rows in programs of their own (64 questions x 8 heads
    # of 4-row decode programs already fill two waves: one split; 4 questions of 128 rows: 4)
    assert PAGED.splits(132, 4, 8, 4096, questions=64) == 1
    assert PAGED.splits(132, 32 * 4, 8, 4096, questions=4) == 4
    with pytest.raises(ValueError, match="rows 64 or 128"):
        Tiling(rows=96)


def test_fast_answerer_with_paged_placement_answers_as_the_copy_one(tokenizer, tiny_llama):
    """FastKVAnswerer(placement=PagedPlacement(...)) gives the copy placement's tokens over passages
    in several orders (stored chunks from the cache, a chunk placed again without a copy); a mode
    that assembles its own context is refused when the answerer is built."""
    from ragcompress.kv.fast import PagedPlacement
    from ragcompress.kv.fast.answer import FastKVAnswerer

    from .test_fast_answer import PASSAGES, QUESTIONS

    gen = Generator.from_model(tiny_llama, tokenizer, max_new_tokens=10)
    copy = FastKVAnswerer.from_generator(gen, capacity=512, max_question=64)
    paged = FastKVAnswerer.from_generator(
        gen, capacity=512, max_question=64, placement=PagedPlacement(pool_tokens=1024, block_size=16)
    )
    for passages in (PASSAGES, PASSAGES[::-1], PASSAGES[1:]):
        want, got = copy.answer(QUESTIONS[0], passages), paged.answer(QUESTIONS[0], passages)
        assert got.token_ids == want.token_ids and len(want.token_ids) > 0
    with pytest.raises(ValueError, match="CopyPlacement"):
        FastKVAnswerer.from_generator(gen, assembly="ape", placement=PagedPlacement())
