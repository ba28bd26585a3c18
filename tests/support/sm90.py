"""Compile-only Triton on a machine without a GPU: every kernel a script launches is compiled
for an H100/H200 (``sm_90``) and never run.

Triton's interpreter runs kernels that its compiler refuses (a module-level float that is not
``tl.constexpr``; a name bound in both branches of an ``if`` with tiles of two shapes): two such
kernels passed their interpreted tests and failed on the GPU. Compiling needs no GPU (Triton
ships ``ptxas``); launching does, so :func:`install` swaps Triton's active driver for one that
names an sm_90 target and makes every ``kernel[grid](...)`` a compile (``warmup``). A script
run this way computes nothing: its outputs are whatever the buffers held.

``install()`` appends a line a launch to the file named by ``RAGCOMPRESS_SM90_LOG``: ``ok
<kernel>`` or ``error <kernel>: <message>`` (then re-raises); or, where this Triton's driver
interface is not the one written against here, one ``unavailable <why>`` line, and patches
nothing (the caller skips)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["install"]


def install() -> None:
    """Make this process's Triton launches compile-only for sm_90 (see the module docstring)."""
    log = os.environ["RAGCOMPRESS_SM90_LOG"]
    try:
        _install(log)
    except Exception as err:  # another Triton's internals: say so, patch nothing
        with open(log, "a") as f:
            f.write(f"unavailable {type(err).__name__}: {err}\n")


def _install(log: str) -> None:
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    class _Sm90(DriverBase):
        @staticmethod
        def is_active() -> bool:
            return True

        def map_python_to_cpp_type(self, ty: str) -> str:
            return ty

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self) -> torch.device:
            return torch.device("cpu")

        def get_benchmarker(self) -> Any:
            raise RuntimeError("compile-only driver: nothing runs")

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def set_current_device(self, device: int) -> None:
            pass

    if not callable(getattr(JITFunction, "run", None)):
        raise RuntimeError("this Triton's JITFunction has no run() to make compile-only")
    driver.set_active(_Sm90())
    run = JITFunction.run

    def compile_only(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        try:
            kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as err:
            with open(log, "a") as f:
                f.write(f"error {self.__name__}: {type(err).__name__}: {str(err)[-2000:]!r}\n")
            raise
        with open(log, "a") as f:
            f.write(f"ok {self.__name__}\n")
        return kernel

    JITFunction.run = compile_only  # type: ignore[method-assign]
