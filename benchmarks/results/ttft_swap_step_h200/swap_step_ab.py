"""The warm 32K request with the question step's weight products on the swapped skinny GEMM
(``y.T = w @ x.T``: the weight tile is the warpgroup product's M side), against the library's
step, in one process: engines over one model sharing its stacked weights, alternating rounds.

`../ttft_skinny_swap_h200/` timed the products alone: on Qwen2.5-7B o_proj 9.4 µs (64 columns,
128-deep K tiles, K in two fp32 parts) against the library's 11.6, down_proj 35.7 against 37.8,
gate/up 69.4 against cuBLAS's 74.0, q/k/v 11.6 against 12.5. Variants, each adding to the one
before: o_proj and down_proj in two fp32 parts (the residual add sums them); gate/up whole
(bf16, as act·mul reads it); q/k/v whole with their biases added before the rounding.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_swap_step_h200/swap_step_ab.py

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

import torch
import triton
import triton.language as tl
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock

from ragcompress.kv.fast import FusedStep
from ragcompress.kv.fast._triton import act_mul, rope_write
from ragcompress.kv.fast.fused import _norm_args

_BN, _BK, _SMEM = 64, 128, 200 * 1024


@triton.jit
def _swapped_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sx, KS,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN: tl.constexpr, BIAS: tl.constexpr,
):  # fmt: skip
    s = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    k_end = tl.minimum((s + 1) * KS, K)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for k0 in tl.range(s * KS, k_end, BK):
        rk = k0 + tl.arange(0, BK)
        w_at = w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :]
        x_at = x_ptr + rm[:, None] * sx + rk[None, :]
        if EVEN:
            w = tl.load(w_at)
            x = tl.load(x_at, mask=rm[:, None] < M, other=0.0)
        else:
            w = tl.load(w_at, mask=(rn[:, None] < N) & (rk[None, :] < k_end), other=0.0)
            x = tl.load(x_at, mask=(rm[:, None] < M) & (rk[None, :] < k_end), other=0.0)
        acc = tl.dot(w, tl.trans(x), acc)
    if BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
    mask = (rm[None, :] < M) & (rn[:, None] < N)
    tl.store(y_ptr + (s * M + rm[None, :]) * N + rn[:, None], acc.to(y_ptr.dtype.element_ty), mask=mask)


def swapped(
    x: torch.Tensor, w: torch.Tensor, splits: int = 1, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, N) in x's dtype when ``splits`` is 1, else (splits, M, N) fp32 partial sums."""
    m, k = x.shape
    n = w.shape[0]
    bm = max(16, triton.next_power_of_2(m))
    ks = triton.cdiv(triton.cdiv(k, splits), _BK) * _BK
    stages = max(1, min(6, _SMEM // ((bm + _BN) * _BK * x.element_size())))
    y = torch.empty(splits, m, n, device=x.device, dtype=torch.float32 if splits > 1 else x.dtype)
    _swapped_kernel[(triton.cdiv(n, _BN), splits)](
        x, w, w if bias is None else bias, y, m, n, k, x.stride(0), ks,
        BM=bm, BN=_BN, BK=_BK, EVEN=n % _BN == 0 and k == ks * splits, BIAS=bias is not None,
        num_warps=4, num_stages=stages,
    )  # fmt: skip
    return y[0] if splits == 1 else y


class SwapStep(FusedStep):
    """The library's step with some products on the swapped kernel (set after a shallow copy of a
    built step, so the stacked weights are shared)."""

    products: tuple[str, ...] = ()

    def _project(self, linear: Any, x: torch.Tensor, splits: int = 1) -> torch.Tensor:
        down = id(linear) in self._downs
        if ("down" if down else "o") in self.products:
            return swapped(x, linear.weight, 2)
        return super()._project(linear, x, splits)

    def _mlp(self, p: Any, hs: torch.Tensor, li: int) -> torch.Tensor:
        gate_up = self._gate_up[li]
        if "gate_up" not in self.products or gate_up is None:
            return super()._mlp(p, hs, li)
        return self._project(p.down_proj, act_mul(swapped(hs, gate_up), self.arch.mlp_act), self.down_splits)

    def _attention(self, p: Any, hs: torch.Tensor, li: int, io: Any) -> torch.Tensor:
        qkv = self._qkv[li]
        if "qkv" not in self.products or qkv is None:
            return super()._attention(p, hs, li, io)
        n, h, kvh, d = hs.shape[0], self.heads, self.kv_heads, self.head_dim
        q, k, v = swapped(hs, qkv, 1, self._qkv_bias[li]).split((h * d, kvh * d, kvh * d), dim=-1)
        qk_norm = None
        if p.q_norm is not None and p.k_norm is not None:
            (qw, q_eps, gemma), (kw, k_eps, _) = _norm_args(p.q_norm), _norm_args(p.k_norm)
            qk_norm = (qw, q_eps, kw, k_eps, gemma)
        cos, sin = (t.contiguous() for t in io.rope.of(li))
        keys, values = io.kv_out(li)
        q = rope_write(q, k, v, cos, sin, io.slots, keys, values, h, kvh, d, qk_norm)
        o = self.attend(q, li, io)
        return self._project(p.o_proj, o.reshape(n, h * d))


def variant(base: FusedStep, products: tuple[str, ...]) -> FusedStep:
    step = copy.copy(base)
    step.__class__ = SwapStep
    step.products = products  # type: ignore[attr-defined]
    step._downs = {id(p.down_proj) for p in base.parts()}  # type: ignore[attr-defined]
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-7b,llama3-8b,mistral-7b,gemma3-12b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    clock = Clock(torch.device("cuda"), 3, 30)
    names = {
        (): "library",
        ("o", "down"): "o + down swapped",
        ("o", "down", "gate_up"): "+ gate/up",
        ("o", "down", "gate_up", "qkv"): "+ q/k/v",
    }
    print(
        f"\n{a.context} keys, 32 question tokens; warm request ms, median of 30 a round, {a.rounds} rounds\n"
    )
    print(
        "| shape | "
        + " | ".join(names.values())
        + " | first tokens | logits max abs diff from the library's |"
    )
    print("|---|" + "---|" * (len(names) + 2))
    for s in a.shapes.split(","):
        torch.manual_seed(0)
        model = build_model(s, "cuda", torch.bfloat16)
        base = FusedStep(model)
        rs = {k: resident(model, a.context, 32, step=variant(base, k) if k else base) for k in names}
        toks, logits = {}, {}
        for k, r in rs.items():
            toks[k] = r.warm()
            logits[k] = r.fast.last_logits[0].float().clone()
        diffs = [float((logits[k] - logits[()]).abs().max()) for k in names]
        warm: dict[Any, list[float]] = {k: [] for k in rs}
        for _ in range(a.rounds):
            for k, r in rs.items():
                warm[k].append(clock(r.warm))
        cells = " | ".join(f"{statistics.median(warm[k]):.3f}" for k in rs)
        print(f"| {s} | {cells} | {list(toks.values())} | {[round(x, 4) for x in diffs]} |")
        del rs, model, base
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
