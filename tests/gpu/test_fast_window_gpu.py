"""Gemma 3 on the fast engine on CUDA: local layers' window by logical position in the flash
cascade (the Triton windowed context pass, flash's window in the question's own slots) against
the reference cascade, inside captured graphs that serve contexts of any length and layout,
and the gather's per-layer RoPE tables compiled. The CPU side is tests/kv/test_fast_window.py."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import (
    EagerStep,
    FastGenerator,
    FlashCascade,
    FusedStep,
    ReferenceCascade,
    StaticKVBuffer,
    StepMeta,
    default_step,
)
from ragcompress.kv.fast.attention import LocalWindow
from ragcompress.kv.fast.gather_reference import gather_reference
from ragcompress.kv.fast.write import _kernel_runs, gather
from tests.gpu.test_fast_path_gpu import _bf16_error_budget, _eager_greedy, _first_logits, _rel
from tests.kv.test_fast_path import _split, gathered, mixed_chunks
from tests.support.tiny import make_tiny_gemma3

VOCAB = 1024


def _gemma(dtype: torch.dtype, **overrides):
    # head_dim 64 (a power of two: the Triton merge and gather), window 6 shorter than any context
    return make_tiny_gemma3(VOCAB, seed=3, hidden_size=256, head_dim=64, **overrides).cuda().to(dtype)


@pytest.fixture(scope="module")
def data():
    rng = torch.Generator().manual_seed(7)
    prefix = torch.randint(5, VOCAB, (9,), generator=rng).tolist()
    passages = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (17, 5, 23, 40)]
    questions = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (6, 11, 3)]
    return prefix, passages, questions


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 3, 7])
@pytest.mark.parametrize("window", [4, 30, 1000])
def test_gpu_windowed_flash_cascade_matches_reference(splits, window):
    """Gapped, repeated positions; a window shorter than the question (the own pass's window
    counts) and one longer than everything (= no window)."""
    g = torch.Generator().manual_seed(1)
    b, t, r, cap, h, kvh, d = 2, 9, 16, 120, 8, 2, 64

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g).to("cuda", torch.bfloat16)

    q, ok, ov = rnd(b * t, h, d), rnd(b * r, kvh, d), rnd(b * r, kvh, d)
    ck, cv = rnd(cap, 3, kvh, d)[:, 1], rnd(cap, 3, kvh, d)[:, 2]
    pos = [*range(50), *range(40, 70, 2), *range(68, 39, -2), *range(75, 100)]
    ctx_pos = torch.tensor(pos + [0] * (cap - len(pos)), device="cuda")
    used = torch.tensor([t, t + 4], dtype=torch.int32, device="cuda")
    q_pos = (100 + torch.arange(t) + torch.tensor([0, 4])[:, None]).reshape(-1).cuda()
    meta = StepMeta(
        b,
        t,
        r,
        cap,
        torch.tensor([105], dtype=torch.int32, device="cuda"),
        used,
        splits=splits,
        group=h // kvh,
    )
    meta.refresh()
    win = LocalWindow(window, q_pos, ctx_pos)
    ref = ReferenceCascade()(q, ck, cv, ok, ov, meta, d**-0.5, window=win).float()
    got = FlashCascade()(q, ck, cv, ok, ov, meta, d**-0.5, window=win).float()
    assert _rel(got, ref) < 1e-2
    if window == 1000:
        plain = FlashCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
        assert _rel(plain, ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False])
def test_gpu_gemma3_graphs_same_tokens_fp32(data, fused):
    """fp32 (reference cascade) in captured graphs, fused and unfused steps: the window's masks
    come from device tensors, so one graph gives the eager tokens for several contexts in turn."""
    prefix, passages, questions = data
    model = _gemma(torch.float32)
    step = FusedStep(model) if fused else EagerStep(model)
    fast = FastGenerator(model, capacity=128, max_question=16, max_new_tokens=10, buckets=(16,), step=step)
    assert fast.graphs
    for use in (passages, passages[2:], passages[::-1]):
        fast.load(*_split(model, prefix, use))
        ctx = prefix + [t for p in use for t in p]
        for q in questions:
            assert fast.generate([q], 10)[0] == _eager_greedy(model, ctx, q, 10)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False])
def test_gpu_gemma3_bf16_graph_logits_close_to_a_full_forward(data, fused):
    """bf16, flash + the windowed Triton pass, fused and unfused steps, one graph for contexts of
    several lengths: as close to an fp32 forward of the same weights as transformers' own bf16
    forward is. The fused step is the default on CUDA."""
    prefix, passages, questions = data
    m = _gemma(torch.bfloat16)
    assert isinstance(default_step(m), FusedStep)
    step = FusedStep(m) if fused else EagerStep(m)
    fast = FastGenerator(m, capacity=128, max_question=16, max_new_tokens=4, buckets=(16,), step=step)
    assert fast.graphs and isinstance(fast.attention, FlashCascade)
    q = questions[1]
    for use in (passages, passages[:1], passages[1:], passages):
        fast.load(*_split(m, prefix, use))
        fast.prefill([q])
        ref, hf_err = _bf16_error_budget(m, prefix + [t for p in use for t in p] + q)
        assert _rel(_first_logits(fast), ref) <= 2 * hf_err + 1e-3


@pytest.mark.gpu
def test_gpu_gather_per_layer_tables_matches_reference(data):
    """Every chunk form in one request, local and global tables: compiled gather == reference."""
    prefix, passages, _ = data
    m = _gemma(torch.bfloat16)
    fast = FastGenerator(m, capacity=256, max_question=8, max_new_tokens=4)
    assert isinstance(fast.rotary, tuple)
    items = mixed_chunks(m, prefix, passages[:3])
    shape = (fast.buffer.layers, fast.buffer.kv_heads, fast.buffer.head_dim)
    a, b = (StaticKVBuffer(*shape, capacity=256, region=4, dtype=torch.bfloat16, device="cuda") for _ in "ab")
    assert _kernel_runs(a, fast.rotary)
    gather(gathered(a, items), fast.rotary)
    gather_reference(gathered(b, items), fast.rotary)
    n = b.ctx_len
    torch.testing.assert_close(a.ctx_keys[:n].float(), b.ctx_keys[:n].float(), atol=2e-2, rtol=1e-2)
    assert torch.equal(a.ctx_values[:n], b.ctx_values[:n])


@pytest.mark.gpu
def test_gpu_gemma_norm_and_gelu_kernels_match_the_modules():
    """The add+norm kernel's Gemma flag rounds like Gemma3RMSNorm ((1 + w) * normed in fp32, cast
    once), the act*mul kernel like Gemma3MLP's tanh-GELU gate times up, in bf16."""
    from transformers.activations import ACT2FN
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from ragcompress.kv.fast._triton import act_mul, add_rmsnorm

    torch.manual_seed(2)
    norm = Gemma3RMSNorm(256, eps=1e-6).cuda().to(torch.bfloat16)
    norm.weight.data.normal_(0, 0.3)
    x, d = (torch.randn(7, 256, device="cuda", dtype=torch.bfloat16) for _ in "xd")
    res, out = add_rmsnorm(x, d, norm.weight, norm.eps, gemma=True)
    assert torch.equal(res, x + d)
    torch.testing.assert_close(out, norm(x + d), atol=0, rtol=1e-2)
    gate_up = torch.randn(7, 2 * 512, device="cuda", dtype=torch.bfloat16) * 3
    want = ACT2FN["gelu_pytorch_tanh"](gate_up[:, :512]) * gate_up[:, 512:]
    torch.testing.assert_close(act_mul(gate_up, "gelu_pytorch_tanh"), want, atol=1e-2, rtol=1e-2)
