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

    assert triton_available(), "CUDA is there but triton is not: pip install 'ragcompress-core[gpu]'"
    _check(dequant_rope, "cuda")


def _interpreted_module():
    import ragcompress.kv.kernels as kernels

    # Triton picks the interpreter when the kernel is decorated: load a private copy of the
    # module (with TRITON_INTERPRET=1 set by the caller) so the real, compiled one stays untouched.
    path = Path(kernels.__file__).with_name("dequant_rope.py")
    spec = importlib.util.spec_from_file_location("_dequant_rope_interpreted", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kernel_matches_reference_in_triton_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _check(_interpreted_module(), "cpu")


def _check_stacked(mod, device: str) -> None:
    """All layers in one launch == the reference layer by layer."""
    import torch

    from ragcompress.kv.kernels import QuantizedKV

    for seed, shape in enumerate(SHAPES):
        layers = [make_inputs(shape, device, 10 * seed + i) for i in range(3)]
        refs = [make_inputs(shape, device, 10 * seed + i) for i in range(3)]
        for r in refs:
            r["delta"] = layers[0]["delta"]
            write(write_dense_reference, write_quantized_reference, r)
        first = layers[0]
        dk = torch.stack([x["dst_k"][0] for x in layers])
        dv = torch.stack([x["dst_v"][0] for x in layers])
        args = (dk, dv, first["offset"], first["delta"], first["inv_freq"])
        if isinstance(first["src"], QuantizedKV):
            mod.write_quantized_layers_triton(QuantizedKV.stack([x["src"] for x in layers]), *args)
        else:
            keys = torch.stack([x["src"][0] for x in layers])
            values = torch.stack([x["src"][1] for x in layers])
            mod.write_dense_layers_triton(keys, values, *args)
        for i, r in enumerate(refs):
            assert_same_writes({**r, "dst_k": dk[i : i + 1], "dst_v": dv[i : i + 1]}, r)


@pytest.mark.gpu
def test_stacked_layers_kernel_matches_reference_on_cuda():
    from ragcompress.kv.kernels import dequant_rope

    _check_stacked(dequant_rope, "cuda")


def test_stacked_layers_kernel_in_triton_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _check_stacked(_interpreted_module(), "cpu")


def _family_tables() -> dict[str, object]:
    """The RoPE table the adapter of each tiny family gives the kernels (head_dim 16)."""
    from ragcompress.models.arch import arch_for
    from tests.support.tiny import TINY_FAMILIES

    return {name: arch_for(make(64)).rope_for(0).inv_freq() for name, make in TINY_FAMILIES.items()}


def test_kernel_matches_reference_with_every_familys_table(monkeypatch):
    """Kernel vs torch reference with the tables the adapters hand out (not only llama3's)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mod = _interpreted_module()
    for freq in _family_tables().values():
        for seed, shape in enumerate(s for s in SHAPES if s[2] == 16):
            got, ref = make_inputs(shape, "cpu", seed), make_inputs(shape, "cpu", seed)
            got["inv_freq"] = ref["inv_freq"] = freq
            write(mod.write_dense_triton, mod.write_quantized_triton, got)
            write(write_dense_reference, write_quantized_reference, ref)
            assert_same_writes(got, ref)
