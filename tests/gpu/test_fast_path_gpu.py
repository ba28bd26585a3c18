"""The fast path on CUDA: graphs give the eager tokens, flash cascade and the Triton chunk write
agree with their torch references. The CPU side is tests/kv/test_fast_path.py."""

from __future__ import annotations

import pytest
import torch

from ragcompress.generate import Generator
from ragcompress.kv.fast import (
    BufferOverflowError,
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
from tests.kv.test_fast_path import _eager, _split, setup  # noqa: F401  (fixture)


@pytest.mark.gpu
def test_gpu_graphs_same_tokens_fp32(setup):
    model, gen, prefix, passages, questions = setup
    model_gpu = make_tiny_llama(model.config.vocab_size, seed=3).cuda()
    ggen = Generator.from_model(model_gpu, gen.tokenizer, max_new_tokens=12)
    fast = FastGenerator(model_gpu, capacity=64, max_question=16, max_new_tokens=12, max_batch=3, buckets=(16,))
    assert fast.graphs
    fast.load(*_split(model_gpu, prefix, passages))
    assert fast.generate(questions, 12, ggen.stop_ids) == [_eager(ggen, prefix, passages, q) for q in questions]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("splits", [1, 4, 7])
def test_gpu_flash_cascade_matches_reference(dtype, splits):
    torch.manual_seed(0)
    b, t, r, cap, h, kvh, d = 3, 7, 12, 300, 16, 4, 128
    dev = "cuda"
    q = torch.randn(b * t, h, d, device=dev, dtype=dtype)
    ck, cv = (torch.randn(cap, kvh, d, device=dev, dtype=dtype) for _ in range(2))
    ok, ov = (torch.randn(b * r, kvh, d, device=dev, dtype=dtype) for _ in range(2))
    meta = StepMeta(b, t, r, cap, torch.tensor([211], dtype=torch.int32, device=dev),
                    torch.tensor([t, t + 3, t + 5], dtype=torch.int32, device=dev), splits=splits)  # fmt: skip
    meta.refresh()
    ref = ReferenceCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    got = FlashCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
def test_gpu_triton_write_matches_reference(setup):
    model = make_tiny_llama(setup[0].config.vocab_size, seed=3).cuda().to(torch.bfloat16)
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
def test_gpu_bf16_fast_path_logits_close_to_eager(setup):
    model, gen, prefix, passages, questions = setup
    m = make_tiny_llama(model.config.vocab_size, seed=3).cuda().to(torch.bfloat16)
    fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, buckets=(16,))
    assert isinstance(fast.attention, FlashCascade)
    fast.load(*_split(m, prefix, passages))
    q = questions[0]
    fast.prefill([q])
    assert fast._shapes[(1, 16)].logits is not None
    got = fast._shapes[(1, 16)].logits[0]
    ctx = prefix + [t for p in passages for t in p]
    with torch.inference_mode():
        want = m(input_ids=torch.tensor([ctx + q], device="cuda")).logits[0, -1].float()
    assert ((got - want).norm() / want.norm()).item() < 2e-2
