"""The int4 chunk pool on CUDA: the compiled int4 paged kernel against its torch reference in
bf16, and the engine over an int4 pool under CUDA graphs against the copy engine over the same
chunks dequantized. The CPU side is tests/kv/test_fast_paged_int4.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ragcompress.kv.fast import (
    FastGenerator,
    Int4ChunkPool,
    Int8ChunkPool,
    PackedChunk,
    PagedFastGenerator,
    StepMeta,
)
from ragcompress.kv.fast.paged import BlockTable, paged_context_reference
from ragcompress.kv.fast.paged_int4 import Int4PagedCascade, paged_int4_reference
from tests.conftest import make_tiny_llama
from tests.gpu.test_fast_path_gpu import _first_logits, _rel
from tests.kv.test_fast_paged_int4 import _dequantized_items
from tests.kv.test_fast_path import _separate_chunks

VOCAB = 1024


@pytest.mark.gpu
@pytest.mark.parametrize("pool_cls", [Int4ChunkPool, Int8ChunkPool], ids=["int4", "int8"])
@pytest.mark.parametrize("splits", [None, 1, 5])
def test_gpu_int4_paged_cascade_matches_reference(splits, pool_cls):
    """The compiled int4 (or int8) kernel + the dense prefix's paged pass + flash own pass + fused merge ==
    the fp32 references (the prefix dense, the chunks dequantized), bf16, Llama-8B head shape,
    chunks read at several deltas, partly filled blocks, garbage rows past the count."""
    from ragcompress.kv.fast.attention import merge, own_pass_reference

    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    b, t, r, bs, kvh, g, d = 2, 7, 12, 64, 8, 4, 128
    pool = pool_cls(3, kvh, d, 40, bs, dtype=dt, device=dev)
    sizes = (300, 1000, 77, 64)
    chunks = [PackedChunk(*(torch.randn(n, 3, kvh, d, device=dev) for _ in range(2)), n, 0) for n in sizes]
    lease = pool.acquire(chunks)
    entries = []
    for (n, e), delta in zip(zip(sizes, lease.entries, strict=True), (5000, -40, 120000, 7), strict=True):
        entries += [(blk, min(bs, n - j * bs), delta) for j, blk in enumerate(e.blocks)]
    entries += entries[:5]  # a chunk's first blocks again, at its delta
    table = BlockTable(48, dev)
    table.rows.fill_(7)
    table.write(entries)
    pre = PackedChunk(*(torch.randn(90, 3, kvh, d, device=dev) for _ in range(2)), 90, 0)
    side = pool.prefix_pool.acquire([pre])
    prefix_table = BlockTable(pool.prefix_pool.num_blocks, dev)
    prefix_table.write([(blk, min(bs, 90 - j * bs), 0) for j, blk in enumerate(side.entries[0].blocks)])
    q = torch.randn(b * t, kvh * g, d, device=dev, dtype=dt)
    own_k, own_v = (torch.randn(b * r, kvh, d, device=dev, dtype=dt) for _ in range(2))
    inv = (1.0 / (5e5 ** (torch.arange(0, d, 2, device=dev).float() / d))).contiguous()
    meta = StepMeta(b, t, r, 1, torch.zeros(1, dtype=torch.int32, device=dev),
                    torch.tensor([t, t + 3], dtype=torch.int32, device=dev), group=g)  # fmt: skip
    att = pool.attention([prefix_table, table], inv)
    assert isinstance(att, Int4PagedCascade) and att._kernel_runs(d)
    att.splits = splits
    got = att(q, pool.keys[:, 1], pool.values[:, 1], own_k, own_v, meta, d**-0.5).float()
    layer, views = att._views(pool.keys[:, 1], pool.values[:, 1])
    assert layer == 1
    o_c, lse_c = paged_int4_reference(q, views, table.rows, inv, bs, d**-0.5)
    pk, pv = pool.prefix_pool.keys[:, 1], pool.prefix_pool.values[:, 1]
    o_p, lse_p = paged_context_reference(q, pk, pv, prefix_table.rows, inv, bs, d**-0.5)
    o_a, lse_a = merge(o_p, lse_p, o_c, lse_c), torch.logaddexp(lse_p, lse_c)
    o_b, lse_b = own_pass_reference(q, own_k, own_v, meta, d**-0.5)
    assert _rel(got, merge(o_a, lse_a, o_b, lse_b).float()) < 1e-2


@pytest.mark.gpu
def test_gpu_bf16_int4_pool_engine_matches_its_dequantized_chunks():
    """bf16, head_dim 64 (the Triton kernels run), graphs: the engine reading int4 codes (and its
    prefix dense) is no further from an fp32 forward over the same chunks dequantized than the
    bf16 copy engine over them is, but for bf16 rounding, for reordered and repeated chunks (the
    two bf16 engines differ by 0.02-0.032 relative on this random model)."""
    rng = torch.Generator().manual_seed(7)
    prefix = torch.randint(5, VOCAB, (9,), generator=rng).tolist()
    passages = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (37, 23)]
    question = torch.randint(5, VOCAB, (6,), generator=rng).tolist()
    cfg = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}
    m = make_tiny_llama(VOCAB, seed=3, **cfg).cuda().to(torch.bfloat16)
    m32 = make_tiny_llama(VOCAB, seed=3, **cfg).cuda()
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})  # the bf16 weights, in fp32
    prefix_kv, chunks = _separate_chunks(m, prefix, passages)
    pre = PackedChunk.from_prefix(prefix_kv)
    pre32 = PackedChunk(pre.keys.float(), pre.values.float(), length=pre.length, base_offset=0)
    kw: dict[str, Any] = {"capacity": 96, "max_question": 16, "max_new_tokens": 12, "buckets": (16,)}
    pool = Int4ChunkPool.for_model(m, 512, 16)
    paged, copy = PagedFastGenerator(m, pool=pool, **kw), FastGenerator(m, **kw)
    ref = FastGenerator(m32, **kw)
    assert paged.graphs and paged.attention._kernel_runs(64)  # type: ignore[union-attr]
    for order in ([0, 1], [1, 0], [1, 1]):
        picked = [chunks[i] for i in order]
        paged.load(pre, picked)
        assert len(paged._leases) == 1
        copy.load(pre, _dequantized_items(pool, picked, paged._leases[0], torch.bfloat16))
        ref.load(pre32, _dequantized_items(pool, picked, paged._leases[0], torch.float32))
        for engine in (paged, copy, ref):
            engine.prefill([question])
        truth = _first_logits(ref)
        got, want = _rel(_first_logits(paged), truth), _rel(_first_logits(copy), truth)
        assert got <= want + 2e-2, (order, got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("pool_cls", [Int4ChunkPool, Int8ChunkPool], ids=["int4", "int8"])
def test_gpu_chunks_enter_through_the_kernel_as_the_torch_path_stores_them(pool_cls):
    """On CUDA a chunk enters an int4/int8 pool through the Triton kernel: its codes, scales and
    zeros equal the torch path's on the CPU (Llama-8B head shape, bf16, blocks of 64, a chunk over
    two runs of blocks with a ragged last block); a NaN in a chunk refuses the request's new
    chunks and leaves the pool's blocks free."""
    from ragcompress.kv.fast.pool import block_runs

    shape = {"layers": 3, "kv_heads": 8, "head_dim": 128, "num_blocks": 12, "block_size": 64}
    g = torch.Generator().manual_seed(1)
    k = torch.randn(300, 3, 8, 128, generator=g) * 4
    k[:, 1, 2, 7] = -3.0  # a constant channel: scale 0
    c = PackedChunk(k.bfloat16(), torch.randn(300, 3, 8, 128, generator=g).bfloat16(), 300, 0)
    blocks = (1, 2, 5, 6, 7)
    ref = pool_cls(**shape, dtype=torch.bfloat16)
    ref._write(c, blocks, block_runs(blocks, 300, 64))
    gpu = pool_cls(**shape, dtype=torch.bfloat16, device="cuda")
    assert gpu._kernel
    gpu._write(PackedChunk(c.keys.cuda(), c.values.cuda(), 300, 0), blocks, block_runs(blocks, 300, 64))
    for name in ("keys", "values", "key_scale", "key_zero", "value_scale", "value_zero"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(ref, name)), name
    assert int(gpu.bad) == 0
    pool = pool_cls(**shape, dtype=torch.bfloat16, device="cuda")
    bad = PackedChunk(c.keys.cuda().clone(), c.values.cuda().clone(), 300, 0)
    bad.keys[299, 2, 7, 100] = float("nan")
    good = PackedChunk(c.keys[:70].cuda(), c.values[:70].cuda(), 70, 0)
    with pytest.raises(ValueError, match="non-finite"):
        pool.acquire([good, bad])
    assert pool.free_blocks == 12 and pool.resident(good) is None
    pool.acquire([good])
    assert pool.resident(good) is not None and int(pool.bad) == 0
