"""The int4 chunk pool (ragcompress.kv.fast.pool_int4, paged_int4, _paged_int4): chunks stored
int4 in the pool, read and dequantized inside the paged attention. The pool stores what the
library's quantizer gives, in ~28% of the dense pool's bytes, and a chunk already int4 in its
grouping enters unchanged; the engine over it gives the tokens of the chunks it holds; the
kernel (Triton interpreter) matches its torch reference. tests/gpu/test_fast_paged_gpu.py runs
it compiled, in graphs, in bf16."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.fast import ChunkPool, HostChunk, Int4ChunkPool, PackedChunk, PagedPlacement
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.kv.fast.pool import RequestLease
from ragcompress.kv.kernels.quant_format import (
    dequantize_keys,
    dequantize_values,
    quantize_keys,
    quantize_values,
)
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.kvzip import KVzipPress
from ragcompress.kv.presses.quantize import QuantizePress
from tests.support.interpret import run_interpreted

from .test_fast_answer import assert_fast_matches_eager
from .test_fast_paged import ORDERS, _chunk
from .test_fast_paged import setup as setup  # the module's fixture, used here too
from .test_fast_path import _separate_chunks


def _heads(t: torch.Tensor, layer: int) -> torch.Tensor:
    return t[:, layer].permute(1, 0, 2)  # (n, kvh, d) -> (kvh, n, d), quant_format's layout


def assert_round_trip(pool: Int4ChunkPool, c: PackedChunk, blocks: tuple[int, ...], max_err: float) -> None:
    """Layer by layer, chunk ``c``'s slots in ``blocks`` of the pool dequantize to quant_format's
    round trip at the pool's bits (key groups of one block, value groups of half a head), within
    ``max_err`` (relative) of the chunk itself but not equal to it."""
    bs, d, bits = pool.block_size, pool.head_dim, pool.bits
    slots = (torch.tensor(blocks)[:, None] * bs + torch.arange(bs)).reshape(-1)[: c.num_tokens]
    for layer in range(pool.layers):
        keys, values = pool.dequantized(layer)
        want_k = dequantize_keys(*quantize_keys(_heads(c.keys, layer), bits, bs), bits, bs)
        want_v = dequantize_values(*quantize_values(_heads(c.values, layer), bits, d // 2), bits, d // 2)
        torch.testing.assert_close(keys[slots].permute(1, 0, 2), want_k)
        torch.testing.assert_close(values[slots].permute(1, 0, 2), want_v)
        err = (keys[slots] - c.keys[:, layer]).norm() / c.keys[:, layer].norm()
        assert 0 < err < max_err


def test_int4_pool_stores_what_the_quantizer_gives():
    """A chunk over non-contiguous blocks (a chunk evicted in between): the pool's dequantized
    slots equal quant_format's round trip with key groups of one block and value groups of half
    a head, layer by layer; the storage is ~28% of a dense pool's bytes."""
    bs, d = 16, 32
    pool = Int4ChunkPool(layers=2, kv_heads=2, head_dim=d, num_blocks=6, block_size=bs)
    a, b, x, c = _chunk(20, 1, d=32), _chunk(10, 2, d=32), _chunk(16, 5, d=32), _chunk(37, 3, d=32)
    lease = pool.acquire([a])
    pool.release(pool.acquire([b]))  # b (block 2) is unleased: c's insert evicts it
    pool.acquire([x])  # block 3; blocks 4 and 5 stay free
    pool.acquire([c])
    blocks = pool.resident(c).blocks  # type: ignore[union-attr]
    assert blocks == (2, 4, 5)  # not one run: two copies
    assert_round_trip(pool, c, blocks, 0.15)  # int4: close, not equal
    pool.release(lease)
    shape = {"layers": 2, "kv_heads": 2, "head_dim": 128, "num_blocks": 8, "block_size": 64}
    dense, int4 = ChunkPool(**shape, dtype=torch.bfloat16), Int4ChunkPool(**shape, dtype=torch.bfloat16)

    def size(p: ChunkPool) -> int:
        tensors = [t for n, t in vars(p).items() if isinstance(t, torch.Tensor) and n != "bad"]
        return sum(t.numel() * t.element_size() for t in tensors)

    assert size(int4) / size(dense) == pytest.approx(0.28125)
    assert int4.compute_dtype == torch.bfloat16 and int4.keys.dtype == torch.uint8


def test_an_int4_chunk_in_the_pools_grouping_enters_unchanged():
    """A chunk stored int4 with key groups of one block and value groups of half a head
    (QuantizePress(bits=4, group_size=block_size), block_size = head_dim / 2) is dequantized on
    entry and quantized again: the pool holds exactly the values it was stored with (each
    group's minimum and maximum come back as codes 0 and 15)."""
    bs, d = 16, 32
    dense = _chunk(45, 4, d=d)
    k = [dequantize_keys(*quantize_keys(_heads(dense.keys, i), 4, bs), 4, bs) for i in range(2)]
    v = [dequantize_values(*quantize_values(_heads(dense.values, i), 4, bs), 4, bs) for i in range(2)]
    k_, v_ = (torch.stack(t).permute(2, 0, 1, 3).contiguous() for t in (k, v))  # (n, layers, kvh, d)
    stored = PackedChunk(k_, v_, length=45, base_offset=0)
    pool = Int4ChunkPool(layers=2, kv_heads=2, head_dim=d, num_blocks=4, block_size=bs)
    pool.acquire([stored])
    for layer in range(2):
        keys, values = pool.dequantized(layer)
        assert torch.equal(keys[:45], stored.keys[:, layer])
        assert torch.equal(values[:45], stored.values[:, layer])


def _dequantized_items(
    pool: Int4ChunkPool, chunks: list, lease: RequestLease, dtype: torch.dtype = torch.float32
) -> list[PackedChunk]:
    """Each chunk as the int4 pool holds it (``lease.tables[1]``: the chunks' entries): its slots
    of every layer, dequantized, as a dense chunk."""
    bs, out = pool.block_size, []
    layers = [pool.dequantized(li) for li in range(pool.layers)]
    for c, (_, e) in zip(chunks, lease.tables[1], strict=True):
        slots = (torch.tensor(e.blocks)[:, None] * bs + torch.arange(bs)).reshape(-1)[: e.num_tokens]
        k = torch.stack([lk[slots] for lk, _ in layers], 1).to(dtype)
        v = torch.stack([lv[slots] for _, lv in layers], 1).to(dtype)
        out.append(PackedChunk(k, v, length=int(c.length), base_offset=int(c.base_offset)))
    return out


@pytest.mark.parametrize("form", ["packed", "stored-knorm-int4", "host-knorm-int4"])
def test_int4_pool_engine_gives_the_tokens_of_the_chunks_it_holds(setup, form):
    """Chunks (dense, or evicted by key norm and stored int4 in the pool's grouping) placed in
    several orders, one twice, after a dense prefix; the int4 ones also from the host tier
    (HostChunk): the engine reading the pool's int4 codes
    gives the copy engine's greedy tokens over the same chunks dequantized (the values the
    kernel computes in registers). Stored int4 chunks in the pool's grouping enter with their
    own values, so there the copy engine reads the stored chunks themselves, and the eager
    assembly of them gives the same tokens."""
    from ragcompress.kv.assemble import assemble
    from ragcompress.kv.fast import FastGenerator, PagedFastGenerator

    model, gen, prefix, passages, questions = setup
    presses = (KnormPress(ratio=0.25), QuantizePress(bits=4, group_size=8)) if "int4" in form else ()
    prefix_kv, chunks = _separate_chunks(model, prefix, passages, presses)
    items: list = [PackedChunk.from_chunk(c) for c in chunks] if form == "packed" else list(chunks)
    if form.startswith("host"):  # from the host tier: int4 codes cross as stored
        items = [HostChunk.from_chunk(c, torch.float32, pin=False) for c in chunks]
    pre = PackedChunk.from_prefix(prefix_kv)
    kw: dict = {"capacity": 80, "max_question": 16, "max_new_tokens": 8, "buckets": (8, 16)}
    pool = Int4ChunkPool.for_model(model, 256, block_size=8)
    paged, copy = PagedFastGenerator(model, pool=pool, **kw), FastGenerator(model, **kw)
    for order in ORDERS:
        picked = [items[i] for i in order]
        pos = paged.load(pre, picked)
        assert len(paged._leases) == 1
        held = (
            _dequantized_items(pool, picked, paged._leases[0])
            if form == "packed"
            else [chunks[i] for i in order]
        )
        assert copy.load(pre, held) == pos
        for q in questions[:2]:
            want = copy.generate([q], 8, gen.stop_ids)[0]
            assert paged.generate([q], 8, gen.stop_ids)[0] == want
            if form != "packed":
                cache, at = assemble(prefix_kv, [chunks[i] for i in order], copy.rotary, model.config)
                assert list(gen.decode(q, cache=cache, max_new_tokens=8, next_position=at).token_ids) == want
    # the prefix in the dense side pool, each distinct chunk once in the int4 pool
    assert pool.prefix_pool.num_blocks - pool.prefix_pool.free_blocks == -(-pre.num_tokens // 8)
    assert pool.num_blocks - pool.free_blocks == sum(-(-c.num_tokens // 8) for c in items)


@pytest.fixture(scope="module")
def gen(tokenizer, tiny_llama) -> Generator:
    return Generator.from_model(tiny_llama, tokenizer, max_new_tokens=10)


@pytest.mark.parametrize("evict", [KnormPress(ratio=0.5), KVzipPress(ratio=0.5)], ids=["knorm", "kvzip"])
def test_int4_pool_answers_as_the_eager_path(gen, tiny_llama, evict):
    """knorm + int4 and kvzip + int4 chunks in the pool's grouping (the tiny model's heads are
    16 channels: value groups of 8 = half a head, key groups of 8 tokens = one block), through
    FastKVAnswerer(placement=PagedPlacement(storage=Int4ChunkPool)): the eager path's greedy
    tokens over passages in several orders and subsets."""
    presses = (evict, QuantizePress(bits=4, group_size=8))
    assert tiny_llama.config.head_dim == 16
    eager = KVAnswerer.from_generator(gen, presses=presses)
    placement = PagedPlacement(pool_tokens=1024, block_size=8, storage=Int4ChunkPool)
    fast = FastKVAnswerer.from_generator(
        gen, presses=presses, capacity=512, max_question=64, placement=placement
    )
    assert_fast_matches_eager(eager, fast)
    assert isinstance(fast.engine.pool, Int4ChunkPool)  # type: ignore[attr-defined]


def test_int4_placement_builds_an_int4_engine(tiny_llama):
    placement = PagedPlacement(pool_tokens=256, block_size=16, storage=Int4ChunkPool)
    engine = placement.engine(tiny_llama, capacity=64)
    pool = engine.pool  # type: ignore[attr-defined]
    assert isinstance(pool, Int4ChunkPool) and pool.keys.dtype == torch.uint8
    assert engine.buffer.q_keys.dtype == torch.float32  # the question's own slots stay dense


_KERNEL_CHECK = """
import torch
from tests.support.partials import check_partials
from ragcompress.kv.fast import Int4ChunkPool, PackedChunk
from ragcompress.kv.fast._paged_int4 import paged_int4_context
from ragcompress.kv.fast.paged import BlockTable
from ragcompress.kv.fast.paged_int4 import paged_int4_reference

g = torch.Generator().manual_seed(3)
bs, layers, kvh, grp, d, n = 16, 2, 2, 2, 32, 5
pool = Int4ChunkPool(layers=layers, kv_heads=kvh, head_dim=d, num_blocks=6, block_size=bs)
kv = [[torch.randn(t, layers, kvh, d, generator=g) for _ in range(2)] for t in (39, 30, 1)]
chunks = [PackedChunk(k, v, length=k.shape[0], base_offset=0) for k, v in kv]
lease = pool.acquire(chunks)
e0, e1, e2 = lease.entries
q = torch.randn(n, kvh * grp, d, generator=g)
inv = 1.0 / (1e4 ** (torch.arange(0, d, 2).float() / d))
# a three-block chunk at one delta (split across programs at 4 splits), a chunk read twice at
# two deltas, partly filled blocks, rows past the count left as garbage
rows = [(b, min(bs, 39 - j * bs), 40) for j, b in enumerate(e0.blocks)]
rows += [(b, min(bs, 30 - j * bs), -7) for j, b in enumerate(e1.blocks)]
rows += [(e2.blocks[0], 1, 0)] + [(b, min(bs, 30 - j * bs), 1000) for j, b in enumerate(e1.blocks)]
table = torch.full((12, 3), 999, dtype=torch.int32)
table[0] = torch.tensor([len(rows), 0, 0])
table[1 : 1 + len(rows)] = torch.tensor(rows, dtype=torch.int32)
l = 1  # a layer's strided views, as the cascade takes them from the step
views = (pool.keys[:, l], pool.key_scale[:, l], pool.key_zero[:, l],
         pool.values[:, l], pool.value_scale[:, l], pool.value_zero[:, l])
ro, rl = paged_int4_reference(q, views, table, inv, bs, d**-0.5)
for splits in (1, 4, 9):
    part = paged_int4_context(q, views, table, inv, bs, splits, d**-0.5)
    o, lse = check_partials(*part, splits, kvh, ro, rl)
    if splits == 9:  # 8 entries, one per split: split 8 is empty
        assert torch.isinf(lse[8:]).all() and (o[8:] == 0).all()
    print("splits", splits, "match")
# into segments 2..5 of a larger pair (as the cascade writes the prefix's and the chunks'), as alone
o_all, lse_all = torch.full((6 * n * grp, kvh, d), 7.0), torch.full((6, kvh, n * grp), 7.0)
alone = paged_int4_context(q, views, table, inv, bs, 4, d**-0.5)
paged_int4_context(q, views, table, inv, bs, 4, d**-0.5, (o_all[2 * n * grp :], lse_all[2:]))
assert torch.equal(o_all[2 * n * grp :], alone[0]) and torch.equal(lse_all[2:], alone[1])
assert (o_all[: 2 * n * grp] == 7.0).all() and (lse_all[:2] == 7.0).all()
print("into a range")
table[0, 0] = 0
o, lse = paged_int4_context(q, views, table, inv, bs, 2, d**-0.5)
assert torch.isinf(lse).all() and (o == 0).all()
print("empty table")
# a bf16 step (fp16 products: codes dequantized by their bits) against fp32 attention over the
# same codes dequantized in fp32: within bf16 rounding
pool16 = Int4ChunkPool(layers=layers, kv_heads=kvh, head_dim=d, num_blocks=6, block_size=bs,
                       dtype=torch.bfloat16)
lease16 = pool16.acquire([PackedChunk(k.bfloat16(), v.bfloat16(), length=k.shape[0], base_offset=0)
                          for k, v in kv[:2]])
rows16 = [(b, min(bs, 39 - j * bs), 40) for j, b in enumerate(lease16.entries[0].blocks)]
rows16 += [(b, min(bs, 30 - j * bs), -7) for j, b in enumerate(lease16.entries[1].blocks)]
table16 = torch.zeros((8, 3), dtype=torch.int32)
table16[0, 0] = len(rows16)
table16[1 : 1 + len(rows16)] = torch.tensor(rows16, dtype=torch.int32)
views16 = (pool16.keys[:, l], pool16.key_scale[:, l], pool16.key_zero[:, l],
           pool16.values[:, l], pool16.value_scale[:, l], pool16.value_zero[:, l])
q16 = q.bfloat16()
ro, rl = paged_int4_reference(q16.float(), views16, table16, inv, bs, d**-0.5)
o, lse = paged_int4_context(q16, views16, table16, inv, bs, 2, d**-0.5)
assert o.dtype == torch.bfloat16
o = o.float().view(2, n, grp, kvh, d).permute(0, 1, 3, 2, 4).reshape(2, n, kvh * grp, d)
lse = lse.view(2, kvh, n, grp).permute(0, 2, 1, 3).reshape(2, n, kvh * grp)
tot = torch.logsumexp(lse, 0)
torch.testing.assert_close(tot, rl, atol=2e-3, rtol=2e-3)
torch.testing.assert_close((o * torch.exp(lse - tot)[..., None]).sum(0), ro, atol=1e-2, rtol=1e-2)
print("bf16 step")
"""


def test_paged_int4_kernel_matches_the_torch_reference():
    """The int4 paged kernel (Triton, interpreted) == paged_int4_reference over one layer's
    strided views of a real Int4ChunkPool: chunks of several blocks, a chunk read twice at two
    deltas, partly filled blocks, garbage rows past the count, an empty split, an empty table;
    written into a range of a larger partials pair, the same values and nothing outside it; and a
    bf16 step (fp16 products) within bf16 rounding of fp32 attention over the same codes."""
    out = run_interpreted(_KERNEL_CHECK)
    want = ["splits 1 match", "splits 4 match", "splits 9 match", "into a range", "empty table", "bf16 step"]
    assert out.splitlines() == want


def test_int4_pool_refuses_an_odd_head_dim():
    with pytest.raises(ValueError, match="even head_dim"):
        Int4ChunkPool(layers=1, kv_heads=1, head_dim=15, num_blocks=1, block_size=16)


@pytest.mark.slow
def test_int4_pool_answers_as_the_eager_path_on_the_packaged_reader() -> None:
    """The packaged SmolLM2 reader (64-channel heads: value groups of 32 = key groups = blocks of
    32): knorm + int4 chunks read in place from an int4 pool give the eager path's tokens."""
    from ragcompress.corpus import load_passages, load_questions

    gen = Generator(max_new_tokens=12)
    presses = (KnormPress(ratio=0.5), QuantizePress(bits=4, group_size=32))
    passages = [p.text for p in load_passages()[:3]]
    question = load_questions()[0].question
    eager = KVAnswerer.from_generator(gen, presses=presses).answer(question, passages)
    placement = PagedPlacement(pool_tokens=4096, block_size=32, storage=Int4ChunkPool)
    kw = {"presses": presses, "capacity": 2048, "max_question": 64, "placement": placement}
    fast = FastKVAnswerer.from_generator(gen, **kw).answer(question, passages)
    assert fast.token_ids == eager.token_ids and len(eager.token_ids) > 0


def test_int4_pool_request_is_all_or_nothing():
    """A request whose chunks do not fit fails whole: the prefix it had leased in the dense side
    pool is released (evictable again), the int4 blocks are as before; a prefix larger than the
    side pool names ``prefix_tokens``."""
    from ragcompress.kv.fast import PoolFullError

    pool = Int4ChunkPool(layers=2, kv_heads=2, head_dim=32, num_blocks=3, block_size=16, prefix_tokens=32)
    pre, small, big = _chunk(20, 1, d=32), _chunk(30, 2, d=32), _chunk(40, 3, d=32)
    held = pool.lease_request([pre, small])  # the prefix: 2 side blocks; small: 2 of 3 blocks
    with pytest.raises(PoolFullError):
        pool.lease_request([pre, big])  # 3 more blocks: 1 free, small is leased
    entry = pool.prefix_pool.resident(pre)
    assert entry is not None and entry.refs == 1  # only the first request's lease
    assert pool.free_blocks == 1
    pool.release_request(held)
    assert entry.refs == 0 and pool.resident(small) is not None and pool.resident(small).refs == 0  # type: ignore[union-attr]
    with pytest.raises(PoolFullError, match="prefix_tokens"):
        pool.lease_request([_chunk(40, 4, d=32), small])


def test_int4_attention_over_an_empty_context_is_the_own_pass():
    """No prefix and no chunk block (both tables empty, as after ``release()``): the int4
    cascade's output is the question's own attention, finite (not the NaN of 0/0)."""
    from ragcompress.kv.fast import StepMeta
    from ragcompress.kv.fast.attention import own_pass_reference
    from ragcompress.kv.fast.paged import BlockTable

    g = torch.Generator().manual_seed(5)
    pool = Int4ChunkPool(layers=2, kv_heads=2, head_dim=16, num_blocks=4, block_size=8, prefix_tokens=16)
    tables = [BlockTable(n) for n in pool.table_sizes(6)]
    att = pool.attention(tables, 1.0 / (1e4 ** (torch.arange(0, 16, 2).float() / 16)))
    b, t, r = 2, 3, 5
    q = torch.randn(b * t, 4, 16, generator=g)
    own_k, own_v = (torch.randn(b * r, 2, 16, generator=g) for _ in range(2))
    meta = StepMeta(
        b, t, r, 1, torch.zeros(1, dtype=torch.int32), torch.tensor([t, t + 1], dtype=torch.int32), group=2
    )
    got = att(q, pool.keys[:, 1], pool.values[:, 1], own_k, own_v, meta, 0.25)
    want, _ = own_pass_reference(q, own_k, own_v, meta, 0.25)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want.to(got.dtype), atol=1e-5, rtol=1e-5)
