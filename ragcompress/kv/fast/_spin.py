"""A one-thread Triton kernel that holds its stream until a device flag is set.

The question step is launched (as one CUDA graph) *before* the host queues the host-chunk
copies it needs, so that the host's work of queuing hundreds of copies runs while the GPU
already computes. An event cannot express that order (a wait reads the event's last record at
the time it is queued, so it cannot wait for a record queued later); a flag in device memory,
set by the side stream after a layer range is written and polled here, can. One program of one
warp polls: the other SMs stay free for the copies' gather kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl

if TYPE_CHECKING:
    import torch

__all__ = ["LIMIT", "wait_flag"]


#: polls before giving up (~1 µs each: seconds): a host that never sets the flag (a bug) must
#: not hang the device, which others may share; the flag then reads 2 (the host can check it)
LIMIT = 1 << 24


@triton.jit
def _wait_flag_kernel(flag, limit):
    # volatile: read memory every time, never a register or L1 copy of the first read
    n = 0
    while (tl.load(flag, volatile=True) == 0) & (n < limit):
        n += 1
    if n >= limit:
        tl.store(flag, 2)


def wait_flag(flag: torch.Tensor) -> None:
    """Hold the current stream until ``flag`` (one int32 on the device) is non-zero (at most
    :data:`LIMIT` polls)."""
    _wait_flag_kernel[(1,)](flag, LIMIT, num_warps=1)
