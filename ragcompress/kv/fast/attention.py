"""Cascade attention over a shared context and per-question regions.

Every query token of a batch attends to (a) the shared context slots ``[0, ctx_len)`` without
a mask and (b) its own question's slots causally. The two parts are computed separately, each
with its log-sum-exp, and merged exactly::

    out = (o_a * exp(lse_a - m) + o_b * exp(lse_b - m)) / (exp(lse_a - m) + exp(lse_b - m))

so that a batch of questions reads the shared context once (one sequence of B*T queries), and
no (queries × context) mask is ever materialized. Valid lengths are device tensors, so the
same captured graph serves any context length up to the buffer's capacity.

Shapes: queries (B*T, heads, head_dim); context keys/values (capacity, kv_heads, head_dim);
question keys/values (B*region, kv_heads, head_dim); ``q_used`` (B,) int32 = question slots
written so far including this step's; ``ctx_len`` (1,) int32.

A local (sliding-window) layer passes a :class:`LocalWindow`: its queries see only the context
slots fewer than ``size`` logical positions back (positions from device tensors, so graphs
stay valid for any request), and in their own question region the last ``size`` slots (one
position per slot there). ``softcap``: ``cap * tanh(score / cap)`` on the scaled scores, for
families that soft-cap attention logits (the reference only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from ragcompress.kv.fast.step_meta import LocalWindow, StepMeta
from ragcompress.kv.fast.write import triton_available

if TYPE_CHECKING:
    import torch

__all__ = [
    "CascadeAttention",
    "FlashCascade",
    "LocalWindow",
    "ReferenceCascade",
    "StepMeta",
    "default_attention",
    "own_pass_reference",
]


class CascadeAttention(ABC):
    """Attention of a step's queries over the shared context + their own question slots."""

    @abstractmethod
    def __call__(
        self,
        q: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        own_k: torch.Tensor,
        own_v: torch.Tensor,
        meta: StepMeta,
        scale: float,
        *,
        window: LocalWindow | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """(B*T, heads, head_dim) in ``q``'s dtype."""


def merge(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Combine two partial attentions; o_* (N, H, D), lse_* (N, H) fp32 (may be -inf: a row
    neither side saw a key for comes out 0, not NaN)."""
    import torch

    m = torch.maximum(lse_a, lse_b).clamp_min(-1e30)
    wa = torch.exp(lse_a - m).unsqueeze(-1)
    wb = torch.exp(lse_b - m).unsqueeze(-1)
    out = (o_a.float() * wa + o_b.float() * wb) / (wa + wb).clamp_min(1e-30)
    return out.to(o_a.dtype)


class ReferenceCascade(CascadeAttention):
    """fp32 torch math; runs anywhere (CPU, fp32 models) and is the GPU kernel's reference."""

    def __call__(self, q, ctx_k, ctx_v, own_k, own_v, meta, scale, *, window=None, softcap=None):  # type: ignore[no-untyped-def]
        import torch

        def scores(x: torch.Tensor) -> torch.Tensor:  # scaled (and soft-capped) scores
            x = x * scale
            return x if softcap is None else softcap * torch.tanh(x / softcap)

        n, heads, d = q.shape
        kvh = ctx_k.shape[1]
        g = heads // kvh
        qf = q.float().view(n, kvh, g, d).permute(1, 2, 0, 3)  # (kvh, g, N, d)
        # (a) shared context, every slot below ctx_len
        kc = ctx_k.float().permute(1, 0, 2).unsqueeze(1)  # (kvh, 1, cap, d)
        vc = ctx_v.float().permute(1, 0, 2).unsqueeze(1)
        s = scores(torch.matmul(qf, kc.transpose(-1, -2)))  # (kvh, g, N, cap)
        valid = torch.arange(ctx_k.shape[0], device=q.device) < meta.ctx_len
        if window is not None:
            valid = valid & window.context_mask(ctx_k.shape[0])  # (N, cap)
        s = s.masked_fill(~valid, float("-inf"))
        lse_a = torch.logsumexp(s, dim=-1)  # (kvh, g, N)
        o_a = torch.matmul(torch.exp(s - lse_a.clamp_min(-1e30).unsqueeze(-1)), vc)
        # (b) own question slots, causal aligned to the last used slot
        size = None if window is None else window.size
        o_b, lse_b = own_pass_reference(q, own_k, own_v, meta, scale, size, softcap)

        def flat(x: torch.Tensor) -> torch.Tensor:  # (kvh, g, N, ...) -> (N, heads, ...)
            return x.permute(2, 0, 1, *range(3, x.dim())).reshape(n, heads, *x.shape[3:])

        return merge(flat(o_a), flat(lse_a), o_b, lse_b).to(q.dtype)


def own_pass_reference(
    q: torch.Tensor,
    own_k: torch.Tensor,
    own_v: torch.Tensor,
    meta: StepMeta,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The queries (N, heads, D) over their own question slots, causally (aligned to each
    question's last used slot; ``window``: the last ``window`` slots only), in fp32 torch math:
    ``(o (N, heads, D), lse (N, heads))``, the partial a cascade merges with its context's."""
    import torch

    n, heads, d = q.shape
    kvh = own_k.shape[1]
    g = heads // kvh
    b, t, r = meta.batch, meta.qlen, meta.region
    qb = q.float().view(n, kvh, g, d).permute(1, 2, 0, 3).reshape(kvh, g, b, t, d)
    ko = own_k[: b * r].float().view(b, r, kvh, d).permute(2, 0, 1, 3).unsqueeze(1)  # (kvh, 1, B, R, d)
    vo = own_v[: b * r].float().view(b, r, kvh, d).permute(2, 0, 1, 3).unsqueeze(1)
    s = torch.matmul(qb, ko.transpose(-1, -2)) * scale  # (kvh, g, B, T, R)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    used = meta.q_used.long().view(b, 1, 1)
    j = torch.arange(r, device=q.device).view(1, 1, r)
    i = torch.arange(t, device=q.device).view(1, t, 1)
    ok = (j < used) & (j <= i + used - t)  # (B, T, R)
    if window is not None:  # own slots hold consecutive positions: the window counts slots
        ok = ok & (i + used - t - j < window)
    s = s.masked_fill(~ok, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.exp(s - lse.clamp_min(-1e30).unsqueeze(-1)), vo)
    o = o.reshape(kvh, g, n, d).permute(2, 0, 1, 3).reshape(n, heads, d)
    return o, lse.reshape(kvh, g, n).permute(2, 0, 1).reshape(n, heads)


class FlashCascade(CascadeAttention):
    """Flash attention on CUDA (fp16/bf16), graph-safe: valid lengths are read from device
    tensors.

    Context pass: the query heads sharing a KV head are folded into the query rows (N*G rows,
    kv_heads heads), so each KV head's keys are read once, not once per query head; the keys
    are split over ``meta.splits`` segments (split-KV) to fill the GPU. Where Triton runs and
    the head size is a power of two, a Triton kernel reads the queries in place
    (:mod:`~ragcompress.kv.fast._context`) and the question's own slots merge in one more
    (:mod:`~ragcompress.kv.fast._merge`); elsewhere flash's variable-length kernel runs both
    passes over copies of the folded queries (``seqused_k``) and torch merges them by
    log-sum-exp.
    """

    def __call__(self, q, ctx_k, ctx_v, own_k, own_v, meta, scale, *, window=None, softcap=None):  # type: ignore[no-untyped-def]
        if softcap is not None:
            raise ValueError("FlashCascade does not soft-cap attention logits; use ReferenceCascade")
        n, h, d = q.shape
        kvh = ctx_k.shape[1]
        g = h // kvh
        if meta.group != g:
            raise ValueError(f"StepMeta.group={meta.group} but the model has {g} query heads per KV head")
        fused = q.is_cuda and d & (d - 1) == 0 and triton_available()
        if window is not None and not fused:  # the windowed context pass is a Triton kernel
            return ReferenceCascade()(q, ctx_k, ctx_v, own_k, own_v, meta, scale, window=window)
        o_a, lse_a = self._context_pass(q, ctx_k, ctx_v, meta, scale, window, fused)
        if fused:  # the own slots and the merge in one kernel
            from ragcompress.kv.fast._merge import merge_with_own

            # the window pass's segments cut its span, not the context: a segment without keys
            # carries lse -inf and weighs nothing, so every segment takes part (used = None)
            size, used = (None, meta.ctx_used) if window is None else (window.size, None)
            return merge_with_own(o_a, lse_a, used, q, own_k, own_v, meta, scale, size)
        # unfused: no window here (a windowed layer went to the reference above)
        o_b, lse_b = _flash(
            q, own_k, own_v, meta.cu_q_own, meta.cu_k_own, meta.qlen, meta.region, True, scale, meta.q_used
        )
        return _merge_torch(o_a, lse_a, o_b, lse_b, meta, n, h, g, kvh, d).to(q.dtype)

    @staticmethod
    def _context_pass(q, ctx_k, ctx_v, meta, scale, window, fused):  # type: ignore[no-untyped-def]
        """The context partials ``(o_a, lse_a)`` over ``meta.splits`` segments: flash split-KV
        over the filled context, or a local layer's window kernel over its window span."""
        n, h, d = q.shape
        kvh = ctx_k.shape[1]
        g, sp = h // kvh, meta.splits
        if window is not None:
            from ragcompress.kv.fast._window import window_context
            from ragcompress.kv.fast.step_meta import window_span

            span = window.span
            if span is None:
                span = window_span(window.q_pos, window.ctx_pos, meta.ctx_len, window.size)
            return window_context(q, ctx_k, ctx_v, window.q_pos, window.ctx_pos, span, sp, window.size, scale)
        if fused:  # Triton, reading the queries in place (see _context.py)
            from ragcompress.kv.fast._context import context_pass

            return context_pass(q, ctx_k, ctx_v, meta.seg_start, meta.ctx_used, scale)
        # row t*g + j, once per segment
        qf = q.view(n, kvh, g, d).permute(0, 2, 1, 3).reshape(n * g, kvh, d)
        qs = qf.repeat(sp, 1, 1) if sp > 1 else qf
        return _flash(
            qs, ctx_k, ctx_v, meta.cu_q_ctx, meta.cu_k_ctx, n * g, meta.max_seg, False, scale, meta.ctx_used
        )


def _merge_torch(o_a, lse_a, o_b, lse_b, meta, n, h, g, kvh, d):  # type: ignore[no-untyped-def]
    """The merge in torch ops (what :func:`~ragcompress.kv.fast._merge.merge_with_own` does after
    its own pass)."""
    import torch

    sp = meta.splits
    # unfold: (S, N, G, KVH) -> (S, N, KVH*G) with head = kv * G + j
    lse_a = _lse_rows(lse_a, sp * n * g).view(sp, n, g, kvh).transpose(2, 3).reshape(sp, n, h)
    o_a = o_a.view(sp, n, g, kvh, d).transpose(2, 3).reshape(sp, n, h, d)
    # Empty segments (past ctx_len) hold no keys: flash leaves them 0 / +inf; drop them.
    valid = (meta.ctx_used > 0).view(sp, 1, 1)
    lse_a = torch.where(valid, lse_a, float("-inf"))
    o_a = torch.where(valid.unsqueeze(-1), o_a, 0)
    lse = torch.cat([lse_a, _lse_rows(lse_b, n).unsqueeze(0)])  # (S+1, N, H)
    o = torch.cat([o_a, o_b.unsqueeze(0)])
    w = torch.exp(lse - lse.amax(0, keepdim=True)).unsqueeze(-1)
    return ((o.float() * w).sum(0) / w.sum(0)).to(o_b.dtype)


def _flash(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, used, left=None):  # type: ignore[no-untyped-def]
    import torch

    window = {} if left is None else {"window_size_left": left, "window_size_right": 0}
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale, seqused_k=used, **window
    )
    return out[0], out[1]


def _lse_rows(lse: torch.Tensor, n: int) -> torch.Tensor:
    """Flash's log-sum-exp as (N, heads): it comes as (heads, N) or, padded, (seqs, heads, max_q)
    — equal query lengths make both the same rows."""
    if lse.dim() == 3:
        lse = lse.permute(1, 0, 2).reshape(lse.shape[1], -1)
    return lse[:, :n].transpose(0, 1).float()


def default_attention(param: torch.Tensor) -> CascadeAttention:
    """Flash cascade on CUDA in fp16/bf16 when it agrees with the reference here, else the
    reference (CPU, fp32, or a flash build that misbehaves on this device)."""
    import torch

    if param.device.type == "cuda" and param.dtype in (torch.float16, torch.bfloat16) and _flash_works(param):
        return FlashCascade()
    return ReferenceCascade()


_FLASH_OK: dict[str, bool] = {}


def _flash_works(param: torch.Tensor) -> bool:
    """Check the flash variable-length path against the reference once per device/dtype."""
    import torch

    key = f"{param.device}/{param.dtype}"
    if key not in _FLASH_OK:
        try:
            _FLASH_OK[key] = _compare_backends(param.device, param.dtype) < 2e-2
        except (RuntimeError, TypeError, NotImplementedError):
            _FLASH_OK[key] = False
        torch.cuda.synchronize(param.device)
    return _FLASH_OK[key]


def _compare_backends(device: torch.device, dtype: torch.dtype) -> float:
    """Relative error of FlashCascade vs ReferenceCascade on random inputs (B=2, T=5)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    b, t, r, cap, h, kvh, d = 2, 5, 9, 40, 8, 2, 64

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g).to(device=device, dtype=dtype)

    # context views strided like the buffer's (capacity, layers, kv_heads, d)[:, layer]
    q, ok, ov = rnd(b * t, h, d), rnd(b * r, kvh, d), rnd(b * r, kvh, d)
    ck, cv = rnd(cap, 3, kvh, d)[:, 1], rnd(cap, 3, kvh, d)[:, 2]
    meta = StepMeta(
        b,
        t,
        r,
        cap,
        torch.tensor([23], dtype=torch.int32, device=device),
        torch.tensor([t, t + 2], dtype=torch.int32, device=device),
        splits=3,
        group=h // kvh,
    )
    meta.refresh()
    ref = ReferenceCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    got = FlashCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    return float((got - ref).norm() / ref.norm())
