"""The int8 chunk pool (Int8ChunkPool: the int4 pool's groups at one code byte a channel, read by
the same kernel with BITS = 8): it stores what the library's 8-bit quantizer gives in 53% of
the dense pool's bytes, the engine over it gives the tokens of the chunks it holds, the kernel
(Triton interpreter) matches its torch reference, and the spec and the placement build it."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import ChunkPool, FastGenerator, Int8ChunkPool, PackedChunk, PagedPlacement
from ragcompress.kv.fast.paged_engine import PagedFastGenerator
from tests.support.interpret import run_interpreted

from .test_fast_paged import ORDERS, _chunk
from .test_fast_paged import setup as setup  # the module's fixture, used here too
from .test_fast_paged_int4 import _KERNEL_CHECK, _dequantized_items, assert_round_trip
from .test_fast_path import _separate_chunks


def test_int8_pool_stores_what_the_quantizer_gives():
    """Layer by layer, the pool's dequantized slots equal quant_format's 8-bit round trip with
    key groups of one block and value groups of half a head, far closer than int4; the storage
    is 53% of a dense pool's bytes."""
    bs, d = 16, 32
    pool = Int8ChunkPool(layers=2, kv_heads=2, head_dim=d, num_blocks=6, block_size=bs)
    c = _chunk(37, 3, d=d)
    assert_round_trip(pool, c, pool.acquire([c]).entries[0].blocks, 0.01)  # int8: within 1%
    assert pool.keys.shape[-1] == d and pool.keys.dtype == torch.uint8
    shape = {"layers": 2, "kv_heads": 2, "head_dim": 128, "num_blocks": 8, "block_size": 64}
    dense, int8 = ChunkPool(**shape, dtype=torch.bfloat16), Int8ChunkPool(**shape, dtype=torch.bfloat16)

    def size(p: ChunkPool) -> int:
        tensors = [t for n, t in vars(p).items() if isinstance(t, torch.Tensor) and n != "bad"]
        return sum(t.numel() * t.element_size() for t in tensors)

    assert size(int8) / size(dense) == pytest.approx(0.53125)


def test_int8_pool_engine_gives_the_tokens_of_the_chunks_it_holds(setup):
    """Chunks placed in several orders, one twice: the engine reading the int8 codes gives the
    copy engine's greedy tokens over the same chunks dequantized; a ragged batch of the orders
    gives each its own tokens."""
    model, gen, prefix, passages, questions = setup
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    items = [PackedChunk.from_chunk(c) for c in chunks]
    pre = PackedChunk.from_prefix(prefix_kv)
    kw: dict = {"capacity": 80, "max_question": 16, "max_new_tokens": 8, "buckets": (8, 16)}
    pool = Int8ChunkPool.for_model(model, 256, block_size=8)
    paged = PagedFastGenerator(model, pool=pool, max_batch=len(ORDERS), **kw)
    copy = FastGenerator(model, **kw)
    alone = []
    for order in ORDERS:
        picked = [items[i] for i in order]
        pos = paged.load(pre, picked)
        assert copy.load(pre, _dequantized_items(pool, picked, paged._leases[0])) == pos
        want = copy.generate([questions[0]], 8, gen.stop_ids)[0]
        assert paged.generate([questions[0]], 8, gen.stop_ids)[0] == want
        alone.append(want)
    paged.load_batch([(pre, [items[i] for i in order]) for order in ORDERS])
    assert paged.generate([questions[0]] * len(ORDERS), 8, gen.stop_ids) == alone


def test_paged_int8_kernel_matches_the_torch_reference():
    """The int4 kernel's interpreted check over a real Int8ChunkPool: the same chunks, tables,
    splits, range write, empty table and bf16 step, read as one code byte a channel."""
    out = run_interpreted(_KERNEL_CHECK.replace("Int4ChunkPool", "Int8ChunkPool"))
    want = ["splits 1 match", "splits 4 match", "splits 9 match", "into a range", "empty table", "bf16 step"]
    assert out.splitlines() == want


def test_int8_storage_from_the_spec_and_the_placement(tiny_llama):
    from ragcompress.pipeline.spec import PlacementSpec

    placement = PlacementSpec(name="paged", pool_tokens=256, block_size=16, storage="int8").build()
    assert placement == PagedPlacement(pool_tokens=256, block_size=16, storage=Int8ChunkPool)
    engine = placement.engine(tiny_llama, capacity=64)
    assert isinstance(engine.pool, Int8ChunkPool)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="an int8 pool needs an even head_dim"):
        Int8ChunkPool(layers=1, kv_heads=1, head_dim=15, num_blocks=1, block_size=16)
