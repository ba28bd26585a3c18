"""The fused Triton kernel against the torch reference: random inputs, poisoned (NaN)
destinations, every slot of the slice written, nothing outside it, errors within one bf16
step. On CUDA (marked gpu), and on CPU through Triton's interpreter when triton is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ragcompress.kv.kernels import write_dense_reference, write_quantized_reference

from .kernel_cases import SHAPES, assert_same_writes, make_inputs, write


def _check(mod, device: str) -> None:
    for seed, shape in enumerate(SHAPES):
        got, ref = make_inputs(shape, device, seed), make_inputs(shape, device, seed)
        write(mod.write_dense_triton, mod.write_quantized_triton, got)
        write(write_dense_reference, write_quantized_reference, ref)
        assert_same_writes(got, ref)


@pytest.mark.gpu
def test_kernel_matches_reference_on_cuda():
    from ragcompress.kv.kernels import dequant_rope, triton_available

    assert triton_available(), "CUDA is there but triton is not: pip install 'ragcompress[gpu]'"
    _check(dequant_rope, "cuda")


def test_kernel_matches_reference_in_triton_interpreter(monkeypatch):
    pytest.importorskip("triton")
    import ragcompress.kv.kernels as kernels

    # Triton picks the interpreter when the kernel is decorated: load a private copy of the
    # module with TRITON_INTERPRET=1 so the real (compiled) one stays untouched.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    path = Path(kernels.__file__).with_name("dequant_rope.py")
    spec = importlib.util.spec_from_file_location("_dequant_rope_interpreted", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _check(mod, "cpu")
