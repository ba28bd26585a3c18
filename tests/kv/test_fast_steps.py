"""The fast engine's decoder steps: chosen by the caller, and never touching the user's model
(stacked weights are the engine's own copies, or views only where the storage already allows)."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import FastGenerator
from tests.support.tiny import assert_untouched, make_tiny_llama, param_snapshot


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
