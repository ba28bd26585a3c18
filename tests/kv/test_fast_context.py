"""The global layers' split-KV context pass (Triton, ``kv/fast/_context.py``) against a softmax
per segment, interpreted on the CPU (the GPU tests run it compiled inside the fast engine)."""

from __future__ import annotations

from tests.support.interpret import run_interpreted

_CHECK = """
import torch
from ragcompress.kv.fast._context import context_pass

g = torch.Generator().manual_seed(5)
checked = 0
# 15 and 12 folded rows (64-row programs, 64-key tiles); 66 (128-row programs, 128-key tiles)
for n, kvh, grp, d in ((5, 2, 3, 16), (3, 1, 4, 32), (33, 1, 2, 16)):
    h, cap, scale = kvh * grp, 150, 0.3
    q = torch.randn(n, h, d, generator=g)
    ck = torch.randn(cap, 3, kvh, d, generator=g)[:, 1]  # a layer's strided view of the buffer
    cv = torch.randn(cap, 3, kvh, d, generator=g)[:, 2]
    # whole key tiles and a tail, a segment shorter than a tile, empty segments
    for ctx_len, segs in ((130, 1), (130, 3), (64, 2), (5, 4), (0, 2)):
        checked += 1
        seg = -(-ctx_len // segs)
        start = torch.tensor([i * seg for i in range(segs)], dtype=torch.int32)
        used = torch.clamp(torch.minimum(ctx_len - start, torch.tensor(seg)), min=0).to(torch.int32)
        o, lse = context_pass(q, ck, cv, start, used, scale)
        o = o.view(segs, n * grp, kvh, d)
        for s in range(segs):
            a, b = int(start[s]), int(start[s] + used[s])
            for t in range(n):
                for hh in range(h):
                    kv, r = hh // grp, t * grp + hh % grp  # the folded row of query head hh
                    if b == a:  # no keys: weighs nothing in the merge
                        assert lse[s, kv, r] == float("-inf") and (o[s, r, kv] == 0).all()
                        continue
                    sc = ck[a:b, kv] @ q[t, hh] * scale
                    torch.testing.assert_close(lse[s, kv, r], torch.logsumexp(sc, 0), atol=1e-4, rtol=1e-4)
                    want = torch.softmax(sc, 0) @ cv[a:b, kv]
                    torch.testing.assert_close(o[s, r, kv], want, atol=1e-4, rtol=1e-4)
"""


def test_context_pass_is_a_softmax_over_each_segment():
    """Each segment's partial (o, natural-log lse) == a softmax over that segment's keys for
    every query head's folded row: whole key tiles and a masked tail, a segment shorter than a
    tile, and empty segments (-inf, 0), with the buffer's strided layer views."""
    assert run_interpreted(_CHECK + "\nprint(checked)").split()[-1] == "15"  # 3 shapes x 5 cuts
