"""The fast path on CUDA: graphs give the eager tokens, flash cascade and the Triton chunk write
agree with their torch references. The CPU side is tests/kv/test_fast_path.py. No tokenizer
here (the device machines have no packaged models): eager greedy decoding is written out."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import (
    FastGenerator,
    FlashCascade,
    PackedChunk,
    ReferenceCascade,
    StaticKVBuffer,
    StepMeta,
    write_chunk,
    write_chunk_reference,
)
from tests.conftest import make_tiny_llama
from tests.kv.test_fast_path import _prefill, _split

VOCAB = 1024


def _eager_greedy(model, ctx: list[int], question: list[int], n: int) -> list[int]:
    cache = _prefill(model, ctx)
    out, step, pos = [], question, len(ctx)
    with torch.inference_mode():
        for _ in range(n):
            ids = torch.tensor([step], device=model.device)
            p = torch.arange(pos, pos + len(step), device=model.device)
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, position_ids=p[None],
                           cache_position=p, logits_to_keep=1).logits  # fmt: skip
            pos += len(step)
            step = [int(logits[0, -1].argmax())]
            out.append(step[0])
    return out


@pytest.fixture(scope="module")
def data():
    rng = torch.Generator().manual_seed(7)
    prefix = torch.randint(5, VOCAB, (9,), generator=rng).tolist()
    passages = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (17, 5, 23)]
    questions = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (6, 11, 3)]
    return prefix, passages, questions


@pytest.mark.gpu
def test_gpu_graphs_same_tokens_fp32(data):
    prefix, passages, questions = data
    model = make_tiny_llama(VOCAB, seed=3).cuda()
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=12, max_batch=3, buckets=(16,))
    assert fast.graphs
    fast.load(*_split(model, prefix, passages))
    ctx = prefix + [t for p in passages for t in p]
    want = [_eager_greedy(model, ctx, q, 12) for q in questions]
    assert fast.generate(questions, 12) == want
    assert [fast.generate([q], 12)[0] for q in questions] == want  # batch 1 graphs too


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("splits", [1, 4, 7])
def test_gpu_flash_cascade_matches_reference(dtype, splits):
    torch.manual_seed(0)
    b, t, r, cap, h, kvh, d = 3, 7, 12, 300, 16, 4, 128
    dev = "cuda"
    q = torch.randn(b * t, h, d, device=dev, dtype=dtype)
    ck, cv = (torch.randn(cap, 2, kvh, d, device=dev, dtype=dtype)[:, 1] for _ in range(2))
    ok, ov = (torch.randn(b * r, kvh, d, device=dev, dtype=dtype) for _ in range(2))
    meta = StepMeta(b, t, r, cap, torch.tensor([211], dtype=torch.int32, device=dev),
                    torch.tensor([t, t + 3, t + 5], dtype=torch.int32, device=dev), splits=splits)  # fmt: skip
    meta.refresh()
    ref = ReferenceCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    got = FlashCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
def test_gpu_triton_write_matches_reference():
    model = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    fast = FastGenerator(model, capacity=700, max_question=8, max_new_tokens=4)
    k = torch.randn(333, 2, 2, 16, device="cuda", dtype=torch.bfloat16)
    chunk = PackedChunk(k, torch.randn_like(k), length=400, base_offset=9)
    a, b = (StaticKVBuffer(2, 2, 16, 700, 4, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    for buf in (a, b):
        buf.ctx_keys.fill_(float("nan"))
        buf.reserve(5, 50)
    write_chunk(a, chunk, fast.rotary)
    write_chunk_reference(b, chunk, fast.rotary)
    torch.testing.assert_close(a.ctx_keys[5:338], b.ctx_keys[5:338], atol=1e-2, rtol=1e-2)
    assert torch.equal(a.ctx_values[5:338], chunk.values)
    assert a.ctx_keys[338:].isnan().all() and a.ctx_keys[:5].isnan().all()  # nothing else written


@pytest.mark.gpu
def test_gpu_bf16_fast_path_logits_close_to_eager(data):
    prefix, passages, questions = data
    m = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, buckets=(16,))
    assert isinstance(fast.attention, FlashCascade)
    fast.load(*_split(m, prefix, passages))
    q = questions[0]
    fast.prefill([q])
    got = fast._shapes[(1, 16)].logits[0]
    ctx = prefix + [t for p in passages for t in p]
    with torch.inference_mode():
        want = m(input_ids=torch.tensor([ctx + q], device="cuda")).logits[0, -1].float()
    assert ((got - want).norm() / want.norm()).item() < 2e-2
