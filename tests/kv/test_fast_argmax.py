"""The step's greedy token (ragcompress/kv/fast/_argmax.py, greedy.py): the two-launch Triton
argmax gives torch.argmax's index for every row (ties to the lowest index across and inside
blocks, a NaN taken as the maximum, rows of -inf, a vocabulary that is no multiple of the
block, bf16 and fp32 logits), and greedy() is torch.argmax off CUDA. The compiled kernel on
CUDA: tests/gpu/test_fast_argmax_gpu.py."""

from __future__ import annotations

import torch

from ragcompress.kv.fast.greedy import greedy
from tests.support.interpret import run_interpreted

_CHECK = """
import torch
from ragcompress.kv.fast._argmax import argmax_rows
from tests.kv.test_fast_argmax import planted

for dtype in (torch.float32, torch.bfloat16):
    x = planted(5000, dtype)
    got = argmax_rows(x, block=1024)
    want = x.argmax(-1)
    assert got.dtype == torch.int64 and got.tolist() == want.tolist(), (got.tolist(), want.tolist())
    assert got.tolist()[1:] == [1100, 2049, 0, 3000, 4999], got.tolist()  # the planted rows
    print(dtype, "match")
try:
    argmax_rows(planted(5000, torch.float32).t())
except ValueError as err:
    print("refused:", "unit last stride" in str(err))
"""


def planted(vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """(6, vocab) logits: random; a tie across blocks; a tie inside a block; a row of -inf; two
    NaNs after a larger finite value; the maximum in the last, partial block."""
    x = torch.randn(6, vocab, generator=torch.Generator().manual_seed(3)).to(dtype)
    x[1, [3100, 1100, 4100]] = 50.0  # across blocks: the first (1100) wins
    x[2, [2050, 2049]] = 60.0  # inside one block: 2049
    x[3] = float("-inf")
    x[4, 10] = 1e4
    x[4, [3000, 4000]] = float("nan")  # torch.argmax: the first NaN
    x[5, vocab - 1] = 70.0
    return x


def test_argmax_kernel_matches_torch_argmax() -> None:
    """Interpreted in a fresh process (Triton's reductions run interpreted only when
    TRITON_INTERPRET=1 is set before triton's first import)."""
    out = run_interpreted(_CHECK).splitlines()
    assert out == ["torch.float32 match", "torch.bfloat16 match", "refused: True"]


def test_greedy_is_torch_argmax_off_cuda() -> None:
    x = planted(5000, torch.float32)
    assert torch.equal(greedy(x), x.argmax(-1))
