"""The context passes' shared base-2 softmax step (``_online.base2_weights``), interpreted: the
row max of the raw products scaled once equals the max of the scaled scores bit for bit, the
weights are the scaled scores' exponentials against it, and hidden keys and rows with no key
yet stay finite (weight 0, no NaN). The passes themselves are checked against their torch twins
in test_fast_context.py and test_fast_paged*.py."""

from __future__ import annotations

from tests.support.interpret import run_interpreted

_SCRIPT = r"""
import torch
from tests.support.online_kernel import weights_kernel as _k

torch.manual_seed(0)
M, N, scale = 16, 32, 0.127 * 1.4426950408889634
s = torch.randn(M, N) * 30
s[3, 5:] = float("-inf")        # hidden keys
s[7] = float("-inf")            # a row with no key in this tile
m_i = torch.randn(M) * 20
m_i[7] = float("-inf")          # ... and none before it
m_i[9] = float("-inf")          # a row's first keys
out_m, out_a, out_p = torch.empty(M), torch.empty(M), torch.empty(M, N)
_k[(1,)](s, m_i, out_m, out_a, out_p, scale, M=M, N=N)
want_m = torch.maximum(m_i, (s * scale).amax(1))
assert torch.equal(out_m, want_m), (out_m, want_m)  # bit for bit
safe = torch.where(want_m == float("-inf"), 0.0, want_m)
torch.testing.assert_close(out_a, torch.exp2(m_i - safe), rtol=1e-6, atol=0)
torch.testing.assert_close(out_p, torch.exp2(s * scale - safe[:, None]), rtol=1e-5, atol=1e-30)
assert torch.isfinite(out_p).all() and torch.isfinite(out_a).all()
assert (out_p[3, 5:] == 0).all() and (out_p[7] == 0).all() and out_a[7] == 0 and out_a[9] == 0
print("ok")
"""


def test_base2_weights_scales_once_and_keeps_hidden_keys_at_zero():
    assert run_interpreted(_SCRIPT).strip().endswith("ok")
