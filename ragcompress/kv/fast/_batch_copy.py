"""Host-to-device copies of many pieces in one runtime call (``cudaMemcpyBatchAsync``).

The host tier copies each request's chunks layer range by layer range: at 32K, 64 chunks x 9
ranges = 576 pieces. Through torch that is a view per piece (two ``split`` s per chunk) and one
``cudaMemcpyAsync`` each: on an H200 host the flush took ~9 ms to queue them, so the copy engine
started late and starved, and it spent 10.5 ms on the pieces against 8.8 for one copy of the same
bytes. ``cudaMemcpyBatchAsync`` (CUDA runtime >= 12.8) takes a range's pieces as three address
arrays in one call, and the copy engine then moved the 576 pieces in 8.9 ms
(``benchmarks/results/ttft_host_copy_h200/``). torch does not expose it, so it is called through
ctypes on the CUDA runtime torch itself loaded; where that runtime or the entry point is missing,
:func:`runtime` is None and the streamer copies through torch as before.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["BatchCopier", "RangeCopies", "range_copies", "runtime"]

_STREAM_ORDER = 1  # cudaMemcpySrcAccessOrderStream: the source is read in stream order
_DEVICE, _HOST = 1, 2  # cudaMemLocationType
_PREFER_OVERLAP = 1  # cudaMemcpyFlagPreferOverlapWithCompute: copy engines, not SMs


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _Attributes(ctypes.Structure):
    _fields_ = [
        ("src_access_order", ctypes.c_int),
        ("src_location", _Location),
        ("dst_location", _Location),
        ("flags", ctypes.c_uint),
    ]


@dataclass(frozen=True)
class RangeCopies:
    """One layer range's pieces: ``dst``, ``src`` (n,) uint64 device and pinned host addresses,
    ``sizes`` (n,) uint64 bytes. The arrays stay alive until the call that reads them returns."""

    dst: np.ndarray
    src: np.ndarray
    sizes: np.ndarray

    def queue(self, device: torch.device) -> None:
        """One batch call on ``device`` 's current stream (made only where :func:`runtime` is
        not None)."""
        import torch

        batch = runtime()
        assert batch is not None
        batch(self, torch.cuda.current_stream(device).cuda_stream, device.index or 0)


@dataclass(frozen=True)
class BatchCopier:
    """``cudaMemcpyBatchAsync`` of the runtime at ``path`` (``version`` as the runtime reports it:
    13000 for 13.0; the entry point lost its ``failIdx`` argument in 13.0)."""

    path: str
    version: int
    fn: Any
    last_error: Any  # cudaGetLastError: a refused call must not surface in torch's next check

    def __call__(self, copies: RangeCopies, stream: int, device: int) -> None:
        """Queue ``copies`` on the CUDA stream handle ``stream`` (not the legacy default stream,
        which the batch call refuses); raises RuntimeError with the runtime's error code."""
        n = len(copies.sizes)
        if n == 0:
            return
        attr = _Attributes(_STREAM_ORDER, _Location(_HOST, 0), _Location(_DEVICE, device), _PREFER_OVERLAP)
        index = (ctypes.c_size_t * 1)(0)
        args: list[Any] = [
            copies.dst.ctypes.data_as(ctypes.c_void_p),
            copies.src.ctypes.data_as(ctypes.c_void_p),
            copies.sizes.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_size_t(n),
            ctypes.byref(attr),
            index,
            ctypes.c_size_t(1),
        ]
        if self.version < 13000:
            args.append(ctypes.byref(ctypes.c_size_t(0)))  # failIdx
        rc = int(self.fn(*args, ctypes.c_void_p(stream)))
        if rc != 0:
            self.last_error()
            raise RuntimeError(f"cudaMemcpyBatchAsync failed with CUDA error {rc} ({n} pieces)")


@functools.cache
def runtime() -> BatchCopier | None:
    """The batch copy of the CUDA runtime loaded in this process (Linux: found in
    ``/proc/self/maps`` once torch initialised CUDA), or None where there is none: no CUDA
    runtime library mapped, a runtime older than 12.8, or no such entry point."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({ln.split()[-1] for ln in maps if "libcudart.so" in ln and "/" in ln})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            version = ctypes.c_int(0)
            if lib.cudaRuntimeGetVersion(ctypes.byref(version)) != 0 or version.value < 12080:
                continue
            fn = lib.cudaMemcpyBatchAsync
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        return BatchCopier(path, version.value, fn, lib.cudaGetLastError)
    return None


def range_copies(
    data_ptrs: np.ndarray,
    layer_bytes: np.ndarray,
    stages: np.ndarray,
    staging_ptr: int,
    ranges: list[tuple[int, int]],
) -> list[RangeCopies]:
    """Per layer range ``(a, b)``: every chunk's bytes of layers ``[a, b)``, from its host data at
    ``data_ptrs`` (chunks,) to the staging area at ``staging_ptr + stages`` (chunks,); a chunk's
    layers are ``layer_bytes`` (chunks,) each, back to back. Vectorised over chunks: this runs on
    the path to the first token."""
    out = []
    for a, b in ranges:
        lo = layer_bytes * a
        out.append(
            RangeCopies(
                (stages + lo + staging_ptr).astype(np.uint64),
                (data_ptrs + lo).astype(np.uint64),
                (layer_bytes * (b - a)).astype(np.uint64),
            )
        )
    return out
