"""The step's Triton argmax (ragcompress.kv.fast._argmax) picks as torch.argmax does: the
first index of the largest value, NaN above any number, rows of any length (interpreted on the
CPU; on CUDA in tests/gpu)."""

from __future__ import annotations

from tests.support.interpret import run_interpreted

_CHECK = """
import torch
from ragcompress.kv.fast._argmax import argmax_rows

g = torch.Generator().manual_seed(0)
for v in (1, 5, 1025, 70_001):
    x = torch.randn(3, v, generator=g)
    # ties: the row's maximum again at a later and at an earlier column than the first
    x[1, v // 2] = 9.0
    x[1, v - 1] = 9.0
    x[2, :] = -float("inf")  # a row of -inf: index 0, as torch
    got, want = argmax_rows(x), x.argmax(-1)
    assert torch.equal(got, want), (v, got, want)
x = torch.randn(2, 3000, generator=g)
x[0, 2500] = float("nan")
x[0, 2600] = float("nan")
x[1, 10] = float("inf")
assert torch.equal(argmax_rows(x), x.argmax(-1)), (argmax_rows(x), x.argmax(-1))
part = torch.randn(2, 4000, generator=g)[:, :3000]  # a row stride that is not the row length
assert torch.equal(argmax_rows(part), part.argmax(-1))
try:
    argmax_rows(torch.randn(2, 8, dtype=torch.float64))
except ValueError:
    pass
else:
    raise AssertionError("a float64 input was taken")
print("ok")
"""


def test_argmax_rows_picks_as_torch_does():
    assert run_interpreted(_CHECK).strip().endswith("ok")
