"""Time the fused dequantize + RoPE re-rotation + write kernel against its torch reference.

    python benchmarks/kernel_bench.py --out benchmarks/results

Needs a CUDA GPU, torch and triton, and nothing else from the project but
``ragcompress.kv.kernels``. For each case (one layer of one chunk written into a bf16 cache of
layout (1, kv_heads, max_len, head_dim)) it reports the median time of both implementations
(``triton.testing.do_bench``, L2 flushed between runs), the bytes the write must move (source
codes/scales or dense K/V read once, destination K/V written once), the bandwidth that gives,
and the bandwidth floor: those bytes at the device-to-device copy bandwidth measured in the same
run. Prints a markdown table; writes ``kernel_bench.json`` and ``kernel_bench.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ragcompress.kv.kernels import QuantizedKV, write_dense_reference, write_quantized_reference
from ragcompress.kv.kernels.quant_format import quantize_keys, quantize_values

# (label, kv_heads, tokens, head_dim, bits (0 = dense bf16), group, per-token deltas, layers per launch)
CASES = [
    ("smollm2 layer, 512 tok, bf16", 3, 512, 64, 0, 32, False, 1),
    ("smollm2 layer, 512 tok, int4", 3, 512, 64, 4, 32, False, 1),
    ("8B layer, 512 tok, bf16", 8, 512, 128, 0, 32, False, 1),
    ("8B layer, 512 tok, int8", 8, 512, 128, 8, 32, False, 1),
    ("8B layer, 512 tok, int4", 8, 512, 128, 4, 32, False, 1),
    ("8B layer, 4096 tok, bf16", 8, 4096, 128, 0, 32, False, 1),
    ("8B layer, 4096 tok, int8", 8, 4096, 128, 8, 32, False, 1),
    ("8B layer, 4096 tok, int4", 8, 4096, 128, 4, 32, False, 1),
    ("8B layer, 32768 tok, bf16", 8, 32768, 128, 0, 32, False, 1),
    ("8B layer, 32768 tok, int8", 8, 32768, 128, 8, 32, False, 1),
    ("8B layer, 32768 tok, int4", 8, 32768, 128, 4, 32, False, 1),
    ("8B layer, 32768 tok, bf16, per-token delta", 8, 32768, 128, 0, 32, True, 1),
    ("8B layer, 32768 tok, int4, per-token delta", 8, 32768, 128, 4, 32, True, 1),
    ("smollm2 chunk, 30 layers in 1 launch, 512 tok, bf16", 3, 512, 64, 0, 32, False, 30),
    ("smollm2 chunk, 30 layers in 1 launch, 512 tok, int4", 3, 512, 64, 4, 32, False, 30),
    ("8B chunk, 32 layers in 1 launch, 512 tok, bf16", 8, 512, 128, 0, 32, False, 32),
    ("8B chunk, 32 layers in 1 launch, 512 tok, int8", 8, 512, 128, 8, 32, False, 32),
    ("8B chunk, 32 layers in 1 launch, 512 tok, int4", 8, 512, 128, 4, 32, False, 32),
    ("8B chunk, 32 layers in 1 launch, 4096 tok, int4", 8, 4096, 128, 4, 32, False, 32),
]


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    from triton.testing import do_bench

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def inv_freq(d: int) -> torch.Tensor:
    return 1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float32, device="cuda") / d))


def run_case(
    label: str, h: int, n: int, d: int, bits: int, group: int, per_token: bool, layers: int, copy_bw: float
) -> dict[str, Any]:
    """``layers`` > 1: one launch writes every layer of the chunk (stacked sources and cache);
    the reference loops over layers."""
    from triton.testing import do_bench

    from ragcompress.kv.kernels import dequant_rope as dr

    g = torch.Generator(device="cuda").manual_seed(0)
    keys = torch.randn(layers, h, n, d, device="cuda", generator=g).to(torch.bfloat16)
    values = torch.randn(layers, h, n, d, device="cuda", generator=g).to(torch.bfloat16)
    max_len, offset = n + 128, 64
    dst = [
        torch.full((layers, h, max_len, d), float("nan"), dtype=torch.bfloat16, device="cuda")
        for _ in range(4)
    ]
    freq = inv_freq(d)
    if per_token:
        delta = torch.randint(0, 4096, (h, n), device="cuda", generator=g)
    else:  # assembly moves a whole chunk by one delta
        delta = torch.tensor(1234, device="cuda")
    out_bytes = 2 * layers * h * n * d * 2
    if bits:
        qs = [
            QuantizedKV(
                *quantize_keys(keys[i], bits, group), *quantize_values(values[i], bits, group), bits, group
            )
            for i in range(layers)
        ]
        stacked = QuantizedKV.stack(qs)
        in_bytes = sum(t.numel() * t.element_size() for t in stacked.tensors())

        def kern() -> None:
            if layers == 1:
                dr.write_quantized_triton(qs[0], dst[0], dst[1], offset, delta, freq)
            else:
                dr.write_quantized_layers_triton(stacked, dst[0], dst[1], offset, delta, freq)

        def ref() -> None:
            for i in range(layers):
                write_quantized_reference(qs[i], dst[2][i], dst[3][i], offset, delta, freq)
    else:
        in_bytes = 2 * layers * h * n * d * 2

        def kern() -> None:
            if layers == 1:
                dr.write_dense_triton(keys[0], values[0], dst[0], dst[1], offset, delta, freq)
            else:
                dr.write_dense_layers_triton(keys, values, dst[0], dst[1], offset, delta, freq)

        def ref() -> None:
            for i in range(layers):
                write_dense_reference(keys[i], values[i], dst[2][i], dst[3][i], offset, delta, freq)

    kern()
    ref()
    torch.cuda.synchronize()
    errs = []
    for a, b in ((dst[0], dst[2]), (dst[1], dst[3])):
        sl = slice(offset, offset + n)
        x, y = a[:, :, sl].float(), b[:, :, sl].float()
        errs.append(float(((x - y).abs() / (y.abs() + 1e-3)).max()))
        assert bool(torch.isfinite(x).all()), f"{label}: kernel left slots unwritten"
    t_kernel = do_bench(kern, return_mode="median")
    t_ref = do_bench(ref, return_mode="median")
    # Device time alone: the same launch captured in a CUDA graph (no Python on the way).
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kern()
    t_graph = do_bench(graph.replay, return_mode="median")
    # Host cost of one eager launch: back-to-back launches, one sync at the end.
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        kern()
    host_us = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    moved = in_bytes + out_bytes
    floor_ms = moved / copy_bw * 1e3
    return {
        "case": label,
        "layers": layers,
        "kv_heads": h,
        "tokens": n,
        "head_dim": d,
        "bits": bits or 16,
        "group": group if bits else None,
        "bytes_moved": moved,
        "delta": "per token" if per_token else "one per chunk",
        "kernel_us": t_kernel * 1e3,
        "kernel_graph_us": t_graph * 1e3,
        "host_us_per_launch": host_us,
        "reference_us": t_ref * 1e3,
        "speedup": t_ref / t_kernel,
        "kernel_GBps": moved / (t_graph * 1e-3) / 1e9,
        "floor_us": floor_ms * 1e3,
        "fraction_of_copy_bw": floor_ms / t_graph,
        "max_rel_err_vs_reference": max(errs),
    }


NOTES = """\
Columns: *kernel µs (graph)* is device time (the launch replayed from a CUDA graph); *kernel µs
(eager)* is `do_bench` on the plain Python call, which includes the host launch cost whenever that
exceeds the GPU time; *host µs/launch* is wall time per launch of 200 back-to-back launches. *floor
µs* is the bytes moved at the measured copy bandwidth; *of copy BW* = floor / graph time.
The torch reference is the same math in eager torch ops (dequantize, cos/sin, rotate, copy).
A "layer" case is one launch per layer (bound by launch latency when small); a "chunk" case
writes every layer of a chunk in one launch (stacked sources, a stacked cache buffer).
"""


def table(rows: list[dict[str, Any]], copy_bw: float) -> str:
    lines = [
        f"device-to-device copy bandwidth (read + written): {copy_bw / 1e9:.0f} GB/s",
        "",
        "| case | bytes moved | kernel µs (graph) | kernel µs (eager) | host µs/launch | torch ref µs "
        "| speedup | kernel GB/s (graph) | floor µs | of copy BW |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['bytes_moved'] / 1e6:.2f} MB | {r['kernel_graph_us']:.1f} | "
            f"{r['kernel_us']:.1f} | {r['host_us_per_launch']:.1f} | {r['reference_us']:.1f} | "
            f"{r['speedup']:.1f}× | {r['kernel_GBps']:.0f} | {r['floor_us']:.1f} | "
            f"{100 * r['fraction_of_copy_bw']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_bench needs a CUDA GPU")
    import triton

    copy_bw = copy_bandwidth()
    rows = [run_case(*c, copy_bw=copy_bw) for c in CASES]
    md = table(rows, copy_bw)
    print(md)
    env = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python benchmarks/kernel_bench.py --out " + str(args.out),
        "copy_bandwidth_GBps": copy_bw / 1e9,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_bench.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    head = "\n".join(f"- {k}: {v}" for k, v in env.items())
    (args.out / "kernel_bench.md").write_text(
        f"# Fused dequantize + re-rotate + write\n\n{head}\n\n{NOTES}\n{md}\n"
    )
    assert all(math.isfinite(r["kernel_us"]) for r in rows)


if __name__ == "__main__":
    main()
