"""cuBLAS's batched GEMM for the question step's weight products: the weights (N, K) viewed as
B blocks of rows, x broadcast over them (batch stride 0), the output written through a strided
view straight into the (M, N) layout the next kernel reads.

`../ttft_gemm_sweep_h200/` timed the products alone at 32 rows: as a ``bmm`` over row blocks
cuBLAS picks other tiles, and Qwen2.5-7B's gate/up ran 69.6 µs (16 blocks) against 71.8 as one
``F.linear``, its o_proj 10.0-10.1 against 11.7 for the library's skinny kernel, its down_proj
36.0 (8 blocks) against 37.0. Here:

1. each product alone again, ``F.linear`` / the library's kernel against ``bmm`` into its own
   (B, M, N/B) output and ``bmm`` into the strided (M, N) view, with the kernels one strided
   call launches (a copy would show);
2. the warm 32K request on a step whose gate/up (and o_proj, down_proj) run so, against the
   library's step, two engines over one model in one process, alternating rounds.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_bmm_h200/bmm_ab.py

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock, alternating, graph_ms

from ragcompress.kv.fast import FusedStep
from ragcompress.kv.fast._gemm import skinny_linear, skinny_partials
from ragcompress.kv.fast._triton import act_mul

ROWS, COPIES = 32, 8
PRODUCTS = {  # (N, K)
    "qwen2.5-7b": {"o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)},
    "llama3-8b": {"o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
}


def bmm_linear(x: torch.Tensor, w: torch.Tensor, b: int) -> torch.Tensor:
    """``x @ w.T`` (M, N) as cuBLAS's batched product over ``b`` blocks of w's rows, written in
    place through a strided view of the (M, N) output."""
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    torch.bmm(
        x.unsqueeze(0).expand(b, m, k),
        w.view(b, n // b, k).transpose(1, 2),
        out=y.view(m, b, n // b).transpose(0, 1),
    )
    return y


def bmm_blocks(x: torch.Tensor, w: torch.Tensor, b: int) -> torch.Tensor:
    """The same product into its own (b, M, N/b) output."""
    m, k = x.shape
    return torch.bmm(x.unsqueeze(0).expand(b, m, k), w.view(b, w.shape[0] // b, k).transpose(1, 2))


def per_product(make: Callable[[Any, Any], Any], x: Any, ws: list[Any]) -> float:
    return graph_ms(lambda: [make(x, w) for w in ws], reps=20) / len(ws) * 1e3


def kernels(fn: Callable[[], Any]) -> str:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return " + ".join(n[:40] for n in names)


def products() -> None:
    torch.manual_seed(0)
    for family, prods in PRODUCTS.items():
        for name, (n, k) in prods.items():
            x = torch.randn(ROWS, k, device="cuda", dtype=torch.bfloat16)
            ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
            ref = torch.nn.functional.linear(x, ws[0]).float()
            print(f"\n## {family} {name} ({ROWS} x {k}) @ ({k} x {n})")
            print(
                f"F.linear {per_product(torch.nn.functional.linear, x, ws):.1f} µs: {kernels(lambda: torch.nn.functional.linear(x, ws[0]))}"
            )
            lib = (lambda x, w: skinny_partials(x, w, 2)) if name == "down" else skinny_linear
            if name != "gate_up":
                print(f"library skinny {per_product(lib, x, ws):.1f} µs")
            print(
                "| blocks | bmm, own (B, M, N/B) output µs | bmm into the strided (M, N) view µs | max abs diff from F.linear | kernels of one strided call |"
            )
            print("|---|---|---|---|---|")
            for b in (2, 4, 8, 16):
                if n % b:
                    continue
                own = per_product(lambda x, w, b=b: bmm_blocks(x, w, b), x, ws)
                strided = per_product(lambda x, w, b=b: bmm_linear(x, w, b), x, ws)
                diff = float((bmm_linear(x, ws[0], b).float() - ref).abs().max())
                print(
                    f"| {b} | {own:.1f} | {strided:.1f} | {diff:.1e} | {kernels(lambda b=b: bmm_linear(x, ws[0], b))} |"
                )
            del ws


@dataclass(eq=False)
class BmmStep(FusedStep):
    """The fused step with gate/up (and, where set, o_proj and down_proj) as batched GEMMs."""

    gate_up_blocks: int = 16
    o_blocks: int = 0  # 0: the library's product
    down_blocks: int = 0

    def _mlp(self, p: Any, hs: torch.Tensor, li: int) -> torch.Tensor:
        gate_up, down = self._gate_up[li], p.down_proj
        if gate_up is None or down is None:
            return super()._mlp(p, hs, li)
        act = act_mul(bmm_linear(hs, gate_up, self.gate_up_blocks), self.arch.mlp_act)
        return self._project(down, act, self.down_splits)

    def _project(self, linear: Any, x: torch.Tensor, splits: int = 1) -> torch.Tensor:
        w = linear.weight
        blocks = self.down_blocks if x.shape[1] > w.shape[0] else self.o_blocks
        if blocks:
            return bmm_linear(x, w, blocks)
        return super()._project(linear, x, splits)


def step_ab(shapes: list[str], context: int, rounds: int) -> None:
    clock = Clock(torch.device("cuda"), 3, 30)
    variants = {
        "library": lambda m: FusedStep(m),
        "gate/up bmm 16": lambda m: BmmStep(m),
        "gate/up 16, o 8, down 8": lambda m: BmmStep(m, o_blocks=8, down_blocks=8),
    }
    print(
        f"\n## The warm request, {context} keys, 32 question tokens; ms, median of 30 a round, {rounds} rounds\n"
    )
    print("| shape | " + " | ".join(variants) + " | first tokens |")
    print("|---|" + "---|" * (len(variants) + 1))
    for s in shapes:
        torch.manual_seed(0)
        model = build_model(s, "cuda", torch.bfloat16)
        rs = {k: resident(model, context, 32, step=make(model)) for k, make in variants.items()}
        toks = {k: r.warm() for k, r in rs.items()}
        m = alternating({k: r.warm for k, r in rs.items()}, clock, rounds)
        cells = " | ".join(f"{m[k]:.3f}" for k in rs)
        print(f"| {s} | {cells} | {list(toks.values())} |")
        del rs, model
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-7b,llama3-8b,mistral-7b,gemma3-12b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    products()
    step_ab(a.shapes.split(","), a.context, a.rounds)


if __name__ == "__main__":
    main()
