"""gate/up and the gate's activation in one launch at <= 64 rows (no gain: README.md).

The fused step runs the MLP's first half as cuBLAS over the stacked gate/up weights, writing
(rows, 2 * inter), then the act·mul kernel reading it back: two launches. Here one program per
32 intermediate columns reads its 32 gate rows and 32 up rows of the stacked weights, keeps two
fp32 accumulators and writes ``act(gate) * up`` rounded as act·mul rounds it (``gate_act``), so
the product's output never goes to memory. The script checks it against cuBLAS + act·mul, times
both alone on each family's shape, and the warm 32K step with it (a ``FusedStep`` subclass)
against the library's, alternating.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gate_act_h200/gate_act_ab.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <this script> --check-cpu

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import gc
from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._triton import act_mul, gate_act
from ragcompress.kv.fast.fused import FusedStep

SHAPES = ("llama3-8b", "qwen2.5-7b", "gemma3-12b")


@triton.jit
def _gate_up_act_kernel(
    x_ptr, w_ptr, y_ptr, M, INTER, K, sx,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GELU: tl.constexpr,
):  # fmt: skip
    # program n: y[:, n*BN:(n+1)*BN] = act(x @ gate[n-block].T) * (x @ up[n-block].T); w (2*INTER,
    # K) = [gate; up], K a multiple of BK, INTER of BN
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=3):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * sx + rk[None, :], mask=rm[:, None] < M, other=0.0)
        wg = tl.load(w_ptr + rn[None, :] * K + rk[:, None])
        wu = tl.load(w_ptr + (INTER + rn)[None, :] * K + rk[:, None])
        acc_g += tl.dot(x, wg)
        acc_u += tl.dot(x, wu)
    dt = y_ptr.dtype.element_ty
    g = acc_g.to(dt).to(tl.float32)  # the GEMM's rounded output, as act·mul reads it
    u = acc_u.to(dt).to(tl.float32)
    tl.store(y_ptr + rm[:, None] * INTER + rn[None, :], gate_act(g, u, dt, GELU), mask=rm[:, None] < M)


def gate_up_act(x: torch.Tensor, w: torch.Tensor, act: str, bn: int = 32, bk: int = 128) -> torch.Tensor:
    m, k = x.shape
    inter = w.shape[0] // 2
    y = torch.empty(m, inter, device=x.device, dtype=x.dtype)
    _gate_up_act_kernel[(inter // bn,)](
        x, w, y, m, inter, k, x.stride(0), BM=max(16, triton.next_power_of_2(m)), BN=bn, BK=bk,
        GELU=act == "gelu_pytorch_tanh", num_warps=4,
    )  # fmt: skip
    return y


class GateActStep(FusedStep):
    """The library's fused step with gate/up + act·mul as one launch at <= skinny_rows rows."""

    def _mlp(self, p: Any, hs: torch.Tensor, li: int) -> torch.Tensor:
        gate_up = self._gate_up[li]
        if gate_up is None or p.down_proj is None or hs.shape[0] > self.skinny_rows:
            return super()._mlp(p, hs, li)
        return self._project(p.down_proj, gate_up_act(hs, gate_up, self.arch.mlp_act))


def check_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    for act in ("silu", "gelu_pytorch_tanh"):
        x = torch.randn(5, 256, generator=g)
        w = torch.randn(2 * 64, 256, generator=g) / 16
        want = act_mul(torch.nn.functional.linear(x, w), act)
        torch.testing.assert_close(gate_up_act(x, w, act), want, atol=1e-4, rtol=1e-4)
    print("cpu check: one launch == GEMM + act·mul")


def gpu() -> None:
    from ragcompress_bench.ttft_resident import resident
    from ragcompress_bench.ttft_shapes import build_model
    from ragcompress_bench.ttft_timing import Clock
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    clock = Clock(torch.device("cuda"), 3, 20)
    for shape in SHAPES:
        torch.manual_seed(0)
        model = build_model(shape, "cuda", torch.bfloat16)
        cfg = model.config
        act = "gelu_pytorch_tanh" if "gemma" in shape else "silu"
        h, inter = cfg.hidden_size, cfg.intermediate_size
        x = torch.randn(32, h, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(2 * inter, h, device="cuda", dtype=torch.bfloat16) / h**0.5
        ref = act_mul(torch.nn.functional.linear(x, w), act)
        print(f"\n## {shape}: gate/up {2 * inter} x {h} at 32 rows")
        print("| variant | us | max abs diff vs cuBLAS + act·mul |\n|---|---|---|")
        t_ref = (
            do_bench_cudagraph(lambda x=x, w=w, act=act: act_mul(torch.nn.functional.linear(x, w), act)) * 1e3
        )
        print(f"| cuBLAS + act·mul | {t_ref:.1f} | 0 |")
        for bn, bk in ((32, 128), (32, 256), (64, 128)):
            run = partial(gate_up_act, x, w, act, bn, bk)
            try:
                diff = float((run().float() - ref.float()).abs().max())
                print(f"| one launch BN {bn} BK {bk} | {do_bench_cudagraph(run) * 1e3:.1f} | {diff:.1e} |")
            except Exception as e:  # a tile this GPU cannot hold
                print(f"| one launch BN {bn} BK {bk} | {type(e).__name__} | |")
        times: dict[str, list[float]] = {"library": [], "one launch": []}
        for _ in range(2):
            for name, cls in (("library", FusedStep), ("one launch", GateActStep)):
                times[name].append(clock(resident(model, 32768, 32, cls(model)).warm))
                gc.collect()
                torch.cuda.empty_cache()
        print(
            "warm 32K ms, two rounds: " + "; ".join(f"{k} {v[0]:.2f} / {v[1]:.2f}" for k, v in times.items())
        )
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
