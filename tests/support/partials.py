"""Check a split context pass's partials against its torch reference (used by the interpreted
kernel checks, which run as scripts of their own: see :mod:`tests.support.interpret`)."""

from __future__ import annotations

import torch


def check_partials(
    o: torch.Tensor, lse: torch.Tensor, splits: int, kv_heads: int, ref_o: torch.Tensor, ref_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a pass's partials (o (S*N*G, kv_heads, D), rows ``t*G + j`` of KV head ``kv``; lse
    (S, kv_heads, N*G)) over the splits and assert they equal the reference's ``(ref_o (N,
    heads, D), ref_lse (N, heads))``. Returns the partials as (S, N, heads, D) and (S, N, heads)."""
    n, heads, d = ref_o.shape
    g = heads // kv_heads
    # (S*N*G, kvh, d) rows t*G + j of KV head kv -> (S, N, heads, d) head kv*G + j
    o = o.view(splits, n, g, kv_heads, d).permute(0, 1, 3, 2, 4).reshape(splits, n, heads, d)
    lse = lse.view(splits, kv_heads, n, g).permute(0, 2, 1, 3).reshape(splits, n, heads)
    tot = torch.logsumexp(lse, 0)
    torch.testing.assert_close(tot, ref_lse, atol=1e-4, rtol=1e-4)
    # a row no split saw (an empty table: every lse -inf) merges to 0, as the reference gives
    w = torch.where(torch.isinf(tot), 0.0, torch.exp(lse - tot))[..., None]
    torch.testing.assert_close((o * w).sum(0), ref_o, atol=1e-4, rtol=1e-4)
    return o, lse
