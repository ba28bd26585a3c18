"""The fast engine's decoder steps: chosen by the caller, and never touching the user's model
(stacked weights are the engine's own copies, or views only where the storage already allows)."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import FastGenerator
from tests.support.tiny import (
    TINY_FAMILIES,
    assert_untouched,
    make_tiny_llama,
    make_tiny_qwen3,
    param_snapshot,
)


@pytest.fixture(scope="module")
def setup(tokenizer):
    return (make_tiny_llama(len(tokenizer), seed=3),)


def test_stacked_weights_copy_or_view_and_never_touch_the_modules():
    from ragcompress.kv.fast.fused import stack_weights

    torch.manual_seed(0)
    lins = [torch.nn.Linear(8, n, bias=False) for n in (8, 4, 4)]
    params = [lin.weight for lin in lins]
    before = [(p.data_ptr(), p._version, p.detach().clone()) for p in params]
    copy = stack_weights(lins)
    assert copy is not None and torch.equal(copy, torch.cat(params).detach())
    copy.zero_()  # the engine's own tensor: the modules do not see it
    # separate allocations cannot be stacked without a copy: shared means "run them one by one"
    assert stack_weights(lins, share=True) is None
    for lin, p, (ptr, version, value) in zip(lins, params, before, strict=True):
        assert lin.weight is p and (p.data_ptr(), p._version) == (ptr, version) and torch.equal(p, value)
    # weights that already lie back to back in one storage are stacked as a view of it
    whole = torch.randn(16, 8)
    for lin, part in zip(lins, whole.split([8, 4, 4]), strict=True):
        lin.weight = torch.nn.Parameter(part, requires_grad=False)
    view = stack_weights(lins, share=True)
    assert view is not None and view.data_ptr() == whole.data_ptr() and torch.equal(view, whole)
    lins[1].weight = torch.nn.Parameter(whole[8:12].clone(), requires_grad=False)
    assert stack_weights(lins, share=True) is None  # a gap in the storage: no view


def test_step_classes_are_chosen_by_the_caller(setup):
    from ragcompress.kv.fast import EagerStep, FusedStep, default_step

    model = setup[0]
    assert type(default_step(model)) is EagerStep  # a CPU model: the fused kernels cannot run
    with pytest.raises(ValueError, match="FusedStep cannot run this model: the model is not on a CUDA"):
        FusedStep(model)
    other = make_tiny_llama(64, seed=4)
    with pytest.raises(ValueError, match="another model"):
        FastGenerator(model, capacity=8, step=EagerStep(other))
    with pytest.raises(ValueError, match="is not supported by the KV path; supported families"):
        EagerStep(torch.nn.Linear(2, 2))
    before = param_snapshot(model)
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=8, step=EagerStep(model))
    assert fast.step is not None and fast.step.model is model
    assert_untouched(model, before)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_rope_is_the_models_rotary_bit_for_bit(family, dtype):
    """The step takes its RoPE tables from the family adapter, not the model's rotary module;
    the cos/sin it computes are still that module's, bit for bit (also for a cast model, whose
    rounded table the adapter reads)."""
    from ragcompress.kv.fast import EagerStep

    model = TINY_FAMILIES[family](64, seed=1).to(dtype)
    step = EagerStep(model)
    positions = torch.tensor([0, 1, 7, 300, 4095, 12, 2048])
    x = torch.zeros(1, len(positions), 64, dtype=dtype)
    # families with per-layer-type tables (Gemma 3) take the layer's type
    per_type = isinstance(model.model.rotary_emb.rope_type, dict)
    types = model.config.layer_types if per_type else [None] * step.num_layers
    got = step.rope(positions, dtype)
    for li, kind in enumerate(types):
        extra = () if kind is None else (kind,)
        want = model.model.rotary_emb(x, positions[None], *extra)
        cos, sin = got.of(li)
        assert cos.dtype == dtype and torch.equal(cos, want[0][0]) and torch.equal(sin, want[1][0])


def test_qk_norms_are_no_reason_to_refuse_the_fused_step():
    """Qwen3's per-head q/k norms run in the fused step (the RMSNorm kernel per head): on the
    CPU the only reason given is the device."""
    from ragcompress.kv.fast import FusedStep

    assert FusedStep.unsupported(make_tiny_qwen3(64)) == "the model is not on a CUDA device"
    reason = FusedStep.unsupported(torch.nn.Linear(2, 2))
    assert reason is not None and "supported families" in reason


@pytest.mark.gpu
def test_gpu_norm_kernels_round_like_the_modules():
    """QK-norms inside the RoPE write and Gemma 3's sandwich add+norm, compiled (see
    tests/kv/test_fast_norm_kernels.py for the interpreted run)."""
    from tests.support.norm_kernels import CASES, check_norm_kernels

    assert sorted(check_norm_kernels("cuda")) == CASES


@pytest.mark.gpu
def test_gpu_fused_qwen3_step_matches_a_full_prefill():
    """Fused (QK-norms per head before RoPE) and eager steps on a bf16 Qwen3 are each as close
    to an fp32 forward of the same weights as transformers' own bf16 forward is."""
    import copy

    from ragcompress.kv.fast import EagerStep, FusedStep
    from tests.kv.test_fast_path import _split

    vocab = 1024
    m = make_tiny_qwen3(vocab, seed=3, hidden_size=256, head_dim=64).cuda().to(torch.bfloat16)
    rng = torch.Generator().manual_seed(7)
    prefix, q = torch.randint(5, vocab, (9,), generator=rng).tolist(), [7, 300, 41, 999, 12, 5]
    passages = [torch.randint(5, vocab, (n,), generator=rng).tolist() for n in (17, 5, 23)]
    x = torch.tensor([prefix + [t for p in passages for t in p] + q], device="cuda")
    with torch.inference_mode():
        ref = copy.deepcopy(m).float()(input_ids=x).logits[0, -1].float()
        hf = m(input_ids=x).logits[0, -1].float()

    def rel(a: torch.Tensor) -> float:
        return float((a - ref).norm() / ref.norm())

    for step in (FusedStep(m), EagerStep(m)):
        fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, buckets=(16,), step=step)
        fast.load(*_split(m, prefix, passages))
        fast.prefill([q])
        assert fast.last_logits is not None
        assert rel(fast.last_logits[0]) <= 2 * rel(hf) + 1e-3, step
