"""Programmatic dependent launch (Hopper and later) for the question step's own kernels: the
skinny GEMM, add + RMSNorm, the RoPE write, act·mul, the context passes (contiguous, paged,
int4/int8 paged) and the own pass + merge.

A step of 32 tokens is ~10 launches a layer, most of them a few µs long, and each pays a ramp
(programs scheduled, first loads in flight) and a tail (the last programs drain while the rest
of the GPU idles). With PDL a kernel launched with ``launch_pdl=True`` may start once every
program of the kernel before it has called :func:`release_next` (or exited): its programs are
scheduled into the other's tail and block in :func:`wait_inputs` until that kernel has finished
and its writes are visible, so no read moves ahead of the data it needs. A kernel the one
before never releases (a torch or cuBLAS kernel) just starts when that one ends, as without PDL.

Every kernel launched with PDL calls :func:`wait_inputs` before its first load of anything an
earlier kernel wrote (its weights may be read before), so the order of the step is unchanged:
each wait returns after the previous kernel is complete, and that one waited for the kernel
before it. ``RAGCOMPRESS_PDL=0`` launches without it (A/B runs).

A chain of skinny GEMMs of Llama-3-8B's products, placed as here (released after the main
loop, the wait first), ran 1.3% faster on an H200; released at the start and with a first
weight tile read before the wait, 1.0-2.1%. The warm question step with the GEMMs, norms, RoPE
write and act·mul so launched: 1.5-2.6% faster at 1K-32K, the same logits bit for bit
(``benchmarks/results/ttft_pdl_tail_h200/``).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import triton
import triton.language as tl

if TYPE_CHECKING:
    import torch

try:  # an older Triton (the project takes torch from 2.4 and its Triton) may lack them
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only with an older Triton
    AVAILABLE = False

    @triton.jit
    def gdc_wait():  # type: ignore[no-redef]  # never reached: PDL is False without them
        pass

    @triton.jit
    def gdc_launch_dependents():  # type: ignore[no-redef]
        pass


__all__ = ["AVAILABLE", "pdl_launch", "pdl_on", "release_next", "wait_inputs"]


@triton.jit
def wait_inputs(PDL: tl.constexpr):
    """Block until the kernel before has finished and its writes are visible (PDL only)."""
    if PDL:
        gdc_wait()


@triton.jit
def release_next(PDL: tl.constexpr):
    """Let the next kernel launch now: this program's remaining work is its own (PDL only)."""
    if PDL:
        gdc_launch_dependents()


@functools.cache
def _capable(index: int) -> bool:
    """Device ``index`` is Hopper or later, and torch's CUDA is 12.3 or later: captured graphs
    keep programmatic dependencies from CUDA 12.3 on."""
    import torch

    cuda = tuple(int(p) for p in (torch.version.cuda or "0.0").split(".")[:2])
    return cuda >= (12, 3) and torch.cuda.get_device_capability(index)[0] >= 9


def pdl_on(t: torch.Tensor) -> bool:
    """Whether a step kernel over ``t`` launches with PDL: a CUDA device of compute capability
    9.0 or later, torch built for CUDA 12.3 or later and a Triton that has it, unless
    ``RAGCOMPRESS_PDL=0``. Off the GPU (Triton's interpreter) never."""
    on = AVAILABLE and t.is_cuda and os.environ.get("RAGCOMPRESS_PDL", "1") != "0"
    return on and _capable(t.device.index or 0)


def pdl_launch(t: torch.Tensor) -> dict[str, Any]:
    """A step kernel's launch keywords for one over ``t``: its ``PDL`` constexpr and
    ``launch_pdl`` where :func:`pdl_on` says so, none otherwise (``PDL`` defaults to False)."""
    return {"PDL": True, "launch_pdl": True} if pdl_on(t) else {}
