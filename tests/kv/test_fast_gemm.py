"""The question step's skinny GEMM (``kv/fast/_gemm.py``) against torch's product, interpreted
on the CPU in fp32 (the interpreter's bf16 products are not exact; the GPU tests run the
engine's bf16 steps through it)."""

from __future__ import annotations

from tests.support.interpret import run_interpreted

_CHECK = """
import torch
from ragcompress.kv.fast._gemm import MAX_ROWS, skinny_fits, skinny_linear, skinny_partials

g = torch.Generator().manual_seed(0)
checked = 0
# unmasked tiles (64 | N, 128 | K) and ragged ones; one row, a bucket, the most rows; x a column
# slice of a wider tensor, as the step's activations may be
for m, n, k in ((1, 64, 512), (32, 128, 256), (17, 40, 300), (MAX_ROWS, 33, 40)):
    x = torch.randn(m, k + 3, generator=g)[:, :k]
    w = torch.randn(n, k, generator=g)
    y = skinny_linear(x, w)
    assert y.shape == (m, n) and y.dtype == x.dtype
    torch.testing.assert_close(y, x @ w.T, atol=1e-4, rtol=1e-4)
    # a bias (Qwen2's q/k/v): added before the rounding
    b = torch.randn(n, generator=g)
    torch.testing.assert_close(skinny_linear(x, w, b), x @ w.T + b, atol=1e-4, rtol=1e-4)
    # split over K: fp32 partial sums (S, M, N) over consecutive parts of K, even parts and
    # ragged ones (S 4 over 300 channels: parts of 128, 128, 44 and none)
    for splits in (2, 4):
        parts = skinny_partials(x, w, splits)
        assert parts.shape == (splits, m, n) and parts.dtype == torch.float32
        torch.testing.assert_close(parts.sum(0), x @ w.T, atol=1e-4, rtol=1e-4)
    checked += 1
for bad in ((MAX_ROWS + 1, 8), (0, 8)):
    try:
        skinny_linear(torch.zeros(bad), torch.zeros(4, 8))
    except ValueError as e:
        assert "rows" in str(e)
    else:
        raise AssertionError(bad)
for splits in (1, 3, 8):
    try:
        skinny_partials(torch.zeros(2, 8), torch.zeros(4, 8), splits)
    except ValueError as e:
        assert "2 or 4 parts" in str(e)
    else:
        raise AssertionError(splits)
try:
    skinny_linear(torch.zeros(2, 8), torch.zeros(8, 4).T)
except ValueError as e:
    assert "contiguous" in str(e)
else:
    raise AssertionError("a transposed weight")
try:
    skinny_linear(torch.zeros(2, 8), torch.zeros(4, 8), torch.zeros(5))
except ValueError as e:
    assert "bias" in str(e)
else:
    raise AssertionError("a bias of the wrong size")
# the step asks first: half-precision contiguous weights, 1..MAX_ROWS rows of unit column stride
half = torch.zeros(4, 8, dtype=torch.bfloat16)
assert skinny_fits(torch.zeros(2, 8), half)
assert not skinny_fits(torch.zeros(2, 8), half.float())
assert not skinny_fits(torch.zeros(MAX_ROWS + 1, 8), half)
assert not skinny_fits(torch.zeros(8, 2).T, half)
assert not skinny_fits(torch.zeros(2, 8), torch.zeros(8, 4, dtype=torch.bfloat16).T)
"""


def test_skinny_gemm_is_the_product():
    """x @ w.T (+ bias) for 1..MAX_ROWS rows, even and ragged tiles, strided x, whole or as
    partial sums over parts of K; clear errors for too many rows, no rows, a split count other
    than 2 or 4, a non-contiguous weight and a bias of the wrong size; which products fit."""
    assert run_interpreted(_CHECK + "\nprint(checked)").split()[-1] == "4"  # every shape ran
