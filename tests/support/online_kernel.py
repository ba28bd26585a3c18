"""A one-program Triton kernel around ``_online.base2_weights`` for tests/kv/test_fast_online.py
(a jit function must live in a file for Triton's compiler to read its source)."""

from __future__ import annotations

import triton
import triton.language as tl

from ragcompress.kv.fast._online import base2_weights


@triton.jit
def weights_kernel(s_ptr, m_ptr, out_m, out_a, out_p, scale, M: tl.constexpr, N: tl.constexpr):
    """One (M, N) tile of raw products ``s`` and running maxima ``m`` (M,) through
    base2_weights (a running sum of 0): writes the new maxima, the rescale factors and the
    weights."""
    r = tl.arange(0, M)
    c = tl.arange(0, N)
    s = tl.load(s_ptr + r[:, None] * N + c[None, :])
    m_new, _, alpha, p = base2_weights(s, scale, tl.load(m_ptr + r), tl.zeros((M,), tl.float32))
    tl.store(out_m + r, m_new)
    tl.store(out_a + r, alpha)
    tl.store(out_p + r[:, None] * N + c[None, :], p)
