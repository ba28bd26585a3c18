"""Triton kernels of the fused decoder step (imported only on CUDA); the context writes are
:mod:`ragcompress.kv.fast._gather`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._pdl import pdl_launch, release_next, wait_inputs

__all__ = ["ACTS", "act_mul", "add_rmsnorm", "rope_write", "silu_mul"]

# gate activations act_mul computes (``config.hidden_act`` / ``hidden_activation`` names)
ACTS = ("silu", "swish", "gelu_pytorch_tanh")


@triton.jit
def _rms(x, w, var, eps, dt: tl.constexpr, GEMMA: tl.constexpr):
    # one RMSNorm of fp32 x (mean square var) by fp32 weight w, returned in fp32 holding the
    # model-dtype value the module would return (Llama's or, GEMMA, Gemma's rounding)
    if GEMMA:
        out = (x * (1.0 / tl.sqrt(var + eps))) * (1.0 + w)
    else:
        out = w * (x * (1.0 / tl.sqrt(var + eps))).to(dt).to(tl.float32)
    return out.to(dt).to(tl.float32)


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr,
    d_ptr,
    w_ptr,
    dw_ptr,
    out_ptr,
    res_ptr,
    rows,
    n_cols,
    eps,
    d_eps,
    HAS_DELTA: tl.constexpr,
    NORM_DELTA: tl.constexpr,
    PLANES: tl.constexpr,
    BLOCK: tl.constexpr,
    GEMMA: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Rounds like the eager modules: residual add in the model dtype, normalized value cast to
    # the model dtype before the weight multiply (LlamaRMSNorm); GEMMA: normalized * (1 + w) in
    # fp32, cast once (Gemma3RMSNorm). NORM_DELTA: the delta is normed first and rounded to the
    # model dtype, as Gemma 3's post-attention / post-MLP norms return it before the add.
    # PLANES > 0: the delta is that many fp32 partial sums (PLANES, rows, n_cols) of a split
    # product, added here and rounded to the model dtype, where the product would have rounded.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    wait_inputs(PDL)  # x and the delta are earlier kernels' outputs
    release_next(PDL)  # one row a program, a few µs: the next kernel launches beside it
    x = tl.load(x_ptr + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_DELTA:
        if PLANES > 0:
            d = tl.zeros([BLOCK], tl.float32)
            for p in tl.static_range(PLANES):
                d += tl.load(d_ptr + (p * rows + row) * n_cols + cols, mask=m, other=0.0)
            d = d.to(res_ptr.dtype.element_ty).to(tl.float32)
        else:
            d = tl.load(d_ptr + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
        if NORM_DELTA:
            dw = tl.load(dw_ptr + cols, mask=m, other=0.0).to(tl.float32)
            d = _rms(d, dw, tl.sum(d * d, axis=0) / n_cols, d_eps, res_ptr.dtype.element_ty, GEMMA)
        xr = (x + d).to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + row * n_cols + cols, xr, mask=m)
        x = xr.to(tl.float32)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    out = _rms(x, w, tl.sum(x * x, axis=0) / n_cols, eps, out_ptr.dtype.element_ty, GEMMA)
    tl.store(out_ptr + row * n_cols + cols, out.to(out_ptr.dtype.element_ty), mask=m)


def add_rmsnorm(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    gemma: bool = False,
    delta_norm: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + delta, rmsnorm(x + delta) * weight)`` for x (rows, hidden); without delta, ``(x, norm)``.
    ``delta``: (rows, hidden) in x's dtype, or (S, rows, hidden) fp32 partial sums of a split
    product (:func:`~ragcompress.kv.fast._gemm.skinny_partials`), summed and rounded to x's
    dtype first. ``gemma``: the norm multiplies by ``1 + weight`` (Gemma's RMSNorm).
    ``delta_norm``: ``(weight, eps)`` of a norm the delta passes first (Gemma 3's sandwich:
    post-block norm, add, next norm, one launch)."""
    rows, n = x.shape
    planes = 0
    if delta is not None and delta.dim() == 3:
        if delta.dtype != torch.float32 or delta.shape[1:] != x.shape or not delta.is_contiguous():
            raise ValueError(
                f"add_rmsnorm: partial sums must be fp32 (S, {rows}, {n}), got {delta.dtype} {delta.shape}"
            )
        planes = delta.shape[0]
    out = torch.empty_like(x)
    res = torch.empty_like(x) if delta is not None else x
    block = triton.next_power_of_2(n)
    dw, d_eps = delta_norm if delta_norm is not None else (weight, 0.0)
    _add_rmsnorm_kernel[(rows,)](
        x,
        delta if delta is not None else x,
        weight,
        dw,
        out,
        res,
        rows,
        n,
        eps,
        d_eps,
        HAS_DELTA=delta is not None,
        NORM_DELTA=delta is not None and delta_norm is not None,
        PLANES=planes,
        BLOCK=block,
        GEMMA=gemma,
        num_warps=min(16, max(4, block // 512)),
        **pdl_launch(x),
    )
    return res, out


@triton.jit
def _rope_write_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    slots_ptr,
    qo_ptr,
    kbuf_ptr,
    vbuf_ptr,
    qw_ptr,
    kw_ptr,
    q_eps,
    k_eps,
    sq,
    sk,
    sv,
    sdst,
    H: tl.constexpr,
    KVH: tl.constexpr,
    HALF: tl.constexpr,
    NORM: tl.constexpr,
    GEMMA: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # program (token t, head j): j < H rotates query head j into qo; j >= H rotates key head
    # j - H and copies its value into the question region at slots[t]. Rounds like
    # apply_rotary_pos_emb: bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)). NORM: the head is
    # RMS-normed first (q_norm / k_norm, Qwen3 and Gemma 3), rounded as the module rounds.
    t = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    i = tl.arange(0, HALF)
    D: tl.constexpr = 2 * HALF
    wait_inputs(PDL)  # q/k/v are the projection's output
    release_next(PDL)
    c1 = tl.load(cos_ptr + t * D + i).to(tl.float32)
    c2 = tl.load(cos_ptr + t * D + HALF + i).to(tl.float32)
    s1 = tl.load(sin_ptr + t * D + i).to(tl.float32)
    s2 = tl.load(sin_ptr + t * D + HALF + i).to(tl.float32)
    dt = qo_ptr.dtype.element_ty
    if j < H:
        src = q_ptr + t * sq + j * D
        dst = qo_ptr + t * (H * D) + j * D
        w_ptr = qw_ptr
        eps = q_eps
    else:
        slot = tl.load(slots_ptr + t)
        src = k_ptr + t * sk + (j - H) * D
        dst = kbuf_ptr + slot * sdst + (j - H) * D
        w_ptr = kw_ptr
        eps = k_eps
        v1 = tl.load(v_ptr + t * sv + (j - H) * D + i)
        v2 = tl.load(v_ptr + t * sv + (j - H) * D + HALF + i)
        tl.store(vbuf_ptr + slot * sdst + (j - H) * D + i, v1)
        tl.store(vbuf_ptr + slot * sdst + (j - H) * D + HALF + i, v2)
    x1 = tl.load(src + i).to(tl.float32)
    x2 = tl.load(src + HALF + i).to(tl.float32)
    if NORM:
        var = (tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / D
        x1 = _rms(x1, tl.load(w_ptr + i).to(tl.float32), var, eps, dt, GEMMA)
        x2 = _rms(x2, tl.load(w_ptr + HALF + i).to(tl.float32), var, eps, dt, GEMMA)
    o1 = (x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)
    o2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
    tl.store(dst + i, o1.to(dt))
    tl.store(dst + HALF + i, o2.to(dt))


def rope_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slots: torch.Tensor,
    kbuf: torch.Tensor,
    vbuf: torch.Tensor,
    heads: int,
    kv_heads: int,
    head_dim: int,
    qk_norm: tuple[torch.Tensor, float, torch.Tensor, float, bool] | None = None,
) -> torch.Tensor:
    """Rotated queries (n, heads, head_dim); rotated keys and values written to kbuf/vbuf
    (slots, kv_heads, head_dim) rows ``slots`` (n,). q/k/v (n, heads*head_dim) with unit
    column stride (row stride free: they may be column slices of one fused projection);
    cos/sin (n, head_dim) contiguous; kbuf/vbuf one row stride (free: a layer's view of the
    context buffer), heads and channels contiguous. ``qk_norm``: ``(q weight, q eps, k weight,
    k eps, gemma)`` of per-head RMSNorms (head_dim,) applied before the rotation."""
    n = q.shape[0]
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(1) != 1:
            raise ValueError(f"rope_write needs unit column stride for {name}, got {x.stride()}")
    if kbuf.stride() != vbuf.stride() or kbuf.stride()[1:] != (head_dim, 1):
        raise ValueError(f"rope_write needs kbuf/vbuf rows of contiguous heads, got {kbuf.stride()}")
    qo = torch.empty(n, heads, head_dim, device=q.device, dtype=q.dtype)
    qw, q_eps, kw, k_eps, gemma = qk_norm if qk_norm is not None else (cos, 0.0, cos, 0.0, False)
    _rope_write_kernel[(n, heads + kv_heads)](
        q,
        k,
        v,
        cos,
        sin,
        slots,
        qo,
        kbuf,
        vbuf,
        qw,
        kw,
        q_eps,
        k_eps,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        kbuf.stride(0),
        H=heads,
        KVH=kv_heads,
        HALF=head_dim // 2,
        NORM=qk_norm is not None,
        GEMMA=gemma,
        num_warps=1,
        **pdl_launch(q),
    )
    return qo


@triton.jit
def _act_mul_kernel(
    x_ptr, out_ptr, inter, BLOCK: tl.constexpr, GELU: tl.constexpr, PDL: tl.constexpr = False
):
    # x (rows, 2 * inter) = [gate | up]
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < inter
    wait_inputs(PDL)  # x is the gate/up product's output
    release_next(PDL)
    g = tl.load(x_ptr + row * (2 * inter) + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * (2 * inter) + inter + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, gate_act(g, u, out_ptr.dtype.element_ty, GELU), mask=m)


@triton.jit
def gate_act(g, u, dt: tl.constexpr, GELU: tl.constexpr):
    """``act(g) * u`` in ``dt`` from fp32 g/u holding ``dt`` values, rounded as LlamaMLP / Gemma3MLP
    round: bf16(bf16(act(gate)) * up); GELU: torch's tanh approximation, else SiLU."""
    if GELU:  # torch's gelu(approximate="tanh"), in fp32 as torch computes it for bf16
        inner = 0.7978845608028654 * (g + 0.044715 * (g * g * g))
        # tanh(z) = 1 - 2 / (exp(2z) + 1): fp32-exact to ~1e-7, far under a bf16 ulp
        a = 0.5 * g * (2.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0))
    else:
        a = g / (1.0 + tl.exp(-g))
    return (a.to(dt).to(tl.float32) * u).to(dt)


def act_mul(gate_up: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """``act(gate) * up`` for gate_up (rows, 2 * inter) contiguous = [gate | up] (one GEMM
    over the stacked gate/up weights); ``act`` in :data:`ACTS`; returns (rows, inter)."""
    if act not in ACTS:
        raise ValueError(f"act_mul: activation {act!r} is not one of {list(ACTS)}")
    rows, two = gate_up.shape
    inter = two // 2
    out = torch.empty(rows, inter, device=gate_up.device, dtype=gate_up.dtype)
    block = 1024
    grid = (rows, triton.cdiv(inter, block))
    gelu = act == "gelu_pytorch_tanh"
    _act_mul_kernel[grid](gate_up, out, inter, BLOCK=block, GELU=gelu, num_warps=4, **pdl_launch(gate_up))
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (see :func:`act_mul`)."""
    return act_mul(gate_up, "silu")
