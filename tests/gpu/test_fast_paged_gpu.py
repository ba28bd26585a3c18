"""Zero-copy placement on CUDA: the paged context kernel compiled against its torch reference in
bf16, and the paged engine under CUDA graphs against the copy engine (fp32: same tokens; bf16:
logits within bf16 rounding of an fp32 forward). The CPU side is tests/kv/test_fast_paged.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ragcompress.kv.fast import ChunkPool, FastGenerator, PackedChunk, PagedFastGenerator, StepMeta
from ragcompress.kv.fast.paged import PagedCascade, paged_context_reference
from tests.conftest import make_tiny_llama
from tests.gpu.test_fast_path_gpu import _bf16_error_budget, _first_logits, _rel
from tests.kv.test_fast_path import _separate_chunks

VOCAB = 1024
ORDERS = ([0, 1, 2], [2, 0, 1], [1, 1, 0])


@pytest.fixture(scope="module")
def data():
    rng = torch.Generator().manual_seed(7)
    prefix = torch.randint(5, VOCAB, (9,), generator=rng).tolist()
    passages = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (37, 5, 23)]
    questions = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (6, 11, 3)]
    return prefix, passages, questions


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [None, 1, 5])
def test_gpu_paged_cascade_matches_reference(splits):
    """The compiled kernel + flash own pass + fused merge == the fp32 references, bf16, Llama-8B
    head shape, blocks repeated at other deltas and partly filled, garbage rows past the count."""
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    b, t, r, bs, kvh, g, d, blocks = 2, 7, 12, 64, 8, 4, 128, 40
    pool_k, pool_v = (torch.randn(blocks * bs, 3, kvh, d, device=dev, dtype=dt)[:, 1] for _ in range(2))
    q = torch.randn(b * t, kvh * g, d, device=dev, dtype=dt)
    own_k, own_v = (torch.randn(b * r, kvh, d, device=dev, dtype=dt) for _ in range(2))
    inv = (1.0 / (5e5 ** (torch.arange(0, d, 2, device=dev).float() / d))).contiguous()
    gen = torch.Generator().manual_seed(1)
    entries = [(int(x), int(u), int(dl)) for x, u, dl in zip(
        torch.randint(0, blocks, (29,), generator=gen),
        torch.randint(1, bs + 1, (29,), generator=gen),
        torch.randint(-5000, 120000, (29,), generator=gen),
        strict=True,
    )]  # fmt: skip
    from ragcompress.kv.fast.paged import BlockTable

    table = BlockTable(48, dev)
    table.rows.fill_(7)
    table.write(entries)
    meta = StepMeta(b, t, r, 1, torch.zeros(1, dtype=torch.int32, device=dev),
                    torch.tensor([t, t + 3], dtype=torch.int32, device=dev), group=g)  # fmt: skip
    got = PagedCascade(table, inv, bs, splits)(q, pool_k, pool_v, own_k, own_v, meta, d**-0.5).float()
    from ragcompress.kv.fast.attention import merge, own_pass_reference

    o_a, lse_a = paged_context_reference(q, pool_k, pool_v, table.rows, inv, bs, d**-0.5)
    o_b, lse_b = own_pass_reference(q, own_k, own_v, meta, d**-0.5)
    want = merge(o_a, lse_a, o_b, lse_b).float()
    assert _rel(got, want) < 1e-2


def _engines(model, bs: int = 16):
    kw: dict[str, Any] = {"capacity": 96, "max_question": 16, "max_new_tokens": 12, "buckets": (16,)}
    pool = ChunkPool.for_model(model, 512, bs)
    return FastGenerator(model, **kw), PagedFastGenerator(model, pool=pool, **kw)


@pytest.mark.gpu
def test_gpu_paged_graphs_same_tokens_fp32(data):
    """fp32 on CUDA, both engines in CUDA graphs (the paged one's block table rewritten between
    replays): the same greedy tokens for reordered and repeated chunks."""
    prefix, passages, questions = data
    model = make_tiny_llama(VOCAB, seed=3).cuda()
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pre = PackedChunk.from_prefix(prefix_kv)
    copy, paged = _engines(model)
    assert paged.graphs
    for order in ORDERS:
        picked = [chunks[i] for i in order]
        assert paged.load(pre, picked) == copy.load(pre, picked)
        for q in questions:
            assert paged.generate([q], 12) == copy.generate([q], 12)


@pytest.mark.gpu
def test_gpu_bf16_paged_logits_within_bf16_rounding(data):
    """bf16, head_dim 64 (the Triton kernel runs), graphs: the paged engine's first-token logits
    are as close to an fp32 forward of the same weights as transformers' bf16 forward is, for
    every order; and close to the copy engine's."""
    prefix, passages, questions = data
    m = make_tiny_llama(VOCAB, seed=3, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    m = m.cuda().to(torch.bfloat16)
    prefix_kv, chunks = _separate_chunks(m, prefix, [passages[0], passages[2]])
    pre = PackedChunk.from_prefix(prefix_kv)
    copy, paged = _engines(m)
    assert isinstance(paged.attention, PagedCascade) and paged.attention._kernel_runs(64)
    for order in ([0, 1], [1, 0], [1, 1]):
        picked = [chunks[i] for i in order]
        paged.load(pre, picked)
        copy.load(pre, picked)
        paged.prefill(questions[:1])
        copy.prefill(questions[:1])
        got, want = _first_logits(paged), _first_logits(copy)
        assert _rel(got, want) < 2e-2, order
        if order == [0, 1]:  # chunks cut at their own positions: a fresh prefill is the truth
            ids = prefix + passages[0] + passages[2] + questions[0]
            ref, hf_err = _bf16_error_budget(m, ids)
            # each chunk was encoded alone after the prefix: compare against the copy engine's
            # distance to the prefill, which the paged engine must not exceed by more than rounding
            assert _rel(got, ref) <= _rel(want, ref) + 2 * hf_err + 1e-3


def _ragged(model, batch: int) -> PagedFastGenerator:
    kw: dict[str, Any] = {"capacity": 96, "max_question": 16, "max_new_tokens": 12, "buckets": (16,)}
    return PagedFastGenerator(model, pool=ChunkPool.for_model(model, 512, 16), max_batch=batch, **kw)


@pytest.mark.gpu
def test_gpu_ragged_batch_in_graphs_answers_each_question_as_alone(data):
    """fp32 on CUDA, graphs: three questions over three different chunk sets in one step (the
    per-question tables rewritten between replays) get the tokens each gets alone."""
    prefix, passages, questions = data
    model = make_tiny_llama(VOCAB, seed=3).cuda()
    prefix_kv, chunks = _separate_chunks(model, prefix, passages)
    pre = PackedChunk.from_prefix(prefix_kv)
    paged = _ragged(model, 3)
    alone = []
    for order, q in zip(ORDERS, questions, strict=True):
        paged.load(pre, [chunks[i] for i in order])
        alone.append(paged.generate([q], 12)[0])
    for _ in range(2):  # the second batch replays the captured ragged graphs
        paged.load_batch([(pre, [chunks[i] for i in order]) for order in ORDERS])
        assert paged.generate(questions, 12) == alone


@pytest.mark.gpu
def test_gpu_bf16_ragged_batch_logits_match_each_alone(data):
    """bf16, the Triton kernel reading per-question tables: each question's first-token logits
    in a ragged batch are within bf16 rounding of its logits alone."""
    prefix, passages, questions = data
    m = make_tiny_llama(VOCAB, seed=3, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    m = m.cuda().to(torch.bfloat16)
    prefix_kv, chunks = _separate_chunks(m, prefix, passages)
    pre = PackedChunk.from_prefix(prefix_kv)
    paged = _ragged(m, 3)
    assert isinstance(paged.attention, PagedCascade) and paged.attention._kernel_runs(64)
    alone = []
    for order, q in zip(ORDERS, questions, strict=True):
        paged.load(pre, [chunks[i] for i in order])
        paged.prefill([q])
        alone.append(_first_logits(paged).clone())
    paged.load_batch([(pre, [chunks[i] for i in order]) for order in ORDERS])
    paged.prefill(questions)
    got = paged.last_logits
    assert got is not None
    for i, want in enumerate(alone):
        assert _rel(got[i].float(), want) < 2e-2, i
