"""The Triton kernels whose CPU tests run them in-process (a private module copy under
TRITON_INTERPRET, not :func:`tests.support.interpret.run_interpreted`) compile for sm_90 at the
engines' shapes: the fused dequantize + re-rotate write (``kv/kernels/dequant_rope.py``), the
fast path's batched gathers (``kv/fast/_gather.py``: one RoPE table and several, int4 and int8)
and the host tier's stream wait (``kv/fast/_spin.py``). The interpreter accepts kernels the
compiler refuses; every other kernel is compiled by its own interpreted check."""

from __future__ import annotations

from tests.support.interpret import compiles_for_sm90, run_interpreted

_SCRIPT = """
import torch
from ragcompress.kv.fast._gather import gather_dense, gather_quantized
from ragcompress.kv.fast._spin import wait_flag
from ragcompress.kv.kernels import dequant_rope
from tests.kv.presses.kernel_cases import SHAPES, make_inputs, write

dequant_rope._interpreting = lambda: True  # its CUDA-only guard: CPU tensors, compiled, not run
for seed, shape in enumerate(SHAPES):  # dense and quantized sources, every test shape
    inputs = make_inputs(shape, "cpu", seed)
    write(dequant_rope.write_dense_triton, dequant_rope.write_quantized_triton, inputs)

bf = torch.bfloat16
for d, tables in ((128, 1), (128, 2), (256, 2)):  # Llama; Gemma 3's local/global tables
    dk = torch.zeros(4, 64, 8, d, dtype=bf)
    inv = torch.rand(tables, d // 2)
    index = torch.zeros(4, dtype=torch.int32) if tables > 1 else None
    heads = 2 if tables > 1 else 1
    gather_dense(torch.zeros(1 << 16, dtype=bf), dk, dk.clone(), torch.zeros(3, 7, dtype=torch.int64),
                 inv, 64, d, index, heads)
    for bits in (4, 8):
        gather_quantized(torch.zeros(1 << 16, dtype=torch.uint8), torch.zeros(1 << 12, dtype=torch.float16),
                         dk, dk.clone(), torch.zeros(3, 11, dtype=torch.int64), inv, 32, 8, 64, d, bits, 32,
                         index, heads if tables > 1 else None)
wait_flag(torch.zeros(1, dtype=torch.int32))
"""


def test_in_process_interpreted_kernels_compile_for_sm90() -> None:
    compiled = set(compiles_for_sm90(_SCRIPT))
    assert compiled == {
        "_dequant_rope_kernel",
        "_gather_dense_kernel",
        "_gather_quant_kernel",
        "_wait_flag_kernel",
    }


_PDL_SCRIPT = """
from types import SimpleNamespace

import torch
from ragcompress.kv.fast import _context, _gemm, _merge, _paged, _paged_int4, _pdl, _triton

_pdl.pdl_on = lambda t: True  # CPU tensors: compiled as a Hopper launch would be
bf = torch.bfloat16
x, w = torch.zeros(32, 512, dtype=bf), torch.zeros(256, 512, dtype=bf)
_gemm.skinny_linear(x, w)
_gemm.skinny_partials(x, w, 2)
h = torch.zeros(32, 256, dtype=bf)
_triton.add_rmsnorm(h, h, torch.ones(256, dtype=bf), 1e-6)
qkv = torch.zeros(32, 4 * 128, dtype=bf)
cs = torch.zeros(32, 128, dtype=bf)
buf = torch.zeros(64, 2, 128, dtype=bf)
_triton.rope_write(qkv[:, :256], qkv[:, 256:384], qkv[:, 384:], cs, cs, torch.zeros(32, dtype=torch.long),
                   buf, buf.clone(), 2, 1, 128)
_triton.act_mul(torch.zeros(32, 512, dtype=bf), "silu")
q = torch.zeros(32, 8, 128, dtype=bf)  # 32 tokens, 8 heads over 2 KV heads
kv = torch.zeros(512, 2, 128, dtype=bf)
segs = torch.zeros(4, dtype=torch.int32)
o, lse = _context.context_pass(q, kv, kv, segs, segs, 0.1)
table, inv = torch.zeros(9, 3, dtype=torch.int32), torch.zeros(64)
_paged.paged_context(q, kv, kv, table, inv, 64, 4, 0.1)
codes, kscale = torch.zeros(512, 2, 64, dtype=torch.uint8), torch.zeros(8, 2, 128, dtype=bf)
vscale = torch.zeros(512, 2, 2, dtype=bf)
_paged_int4.paged_int4_context(q, (codes, kscale, kscale, codes, vscale, vscale), table, inv, 64, 4, 0.1)
meta = SimpleNamespace(region=48, q_used=torch.zeros(1, dtype=torch.int32), qlen=32)
_merge.merge_with_own(o, lse, segs, q, kv, kv, meta, 0.1)
"""


def test_the_steps_dependent_launches_compile_for_sm90() -> None:
    """The step kernels' programmatic-dependent-launch variants (wait before the first read of
    an earlier output, release the next kernel; launched with ``launch_pdl``) compile for sm_90:
    off the GPU they never run, and the GPU test compares them bit for bit
    (tests/gpu/test_fast_path_gpu.py)."""
    compiled = compiles_for_sm90(_PDL_SCRIPT)
    assert set(compiled) == {
        "_skinny_kernel", "_add_rmsnorm_kernel", "_rope_write_kernel", "_act_mul_kernel",
        "_context_kernel", "_paged_kernel", "_paged_int4_kernel", "_own_merge_kernel",
    }  # fmt: skip


def test_dependent_launches_only_on_a_hopper_gpu(monkeypatch) -> None:
    """Off CUDA the step's kernels launch plainly; the launch keywords follow the decision."""
    import torch

    from ragcompress.kv.fast import _pdl

    assert not _pdl.pdl_on(torch.zeros(1))
    assert _pdl.pdl_launch(torch.zeros(1)) == {}
    monkeypatch.setattr(_pdl, "pdl_on", lambda t: True)
    assert _pdl.pdl_launch(torch.zeros(1)) == {"PDL": True, "launch_pdl": True}


def test_dependent_launches_need_hopper_and_cuda_12_3(monkeypatch) -> None:
    """Graphs keep programmatic dependencies from CUDA 12.3 on, and the instructions exist from
    compute capability 9.0: both are needed."""
    import torch

    from ragcompress.kv.fast._pdl import _capable

    check = _capable.__wrapped__  # not the per-device cache
    for cuda, major, want in (("12.4", 9, True), ("13.0", 10, True), ("12.1", 9, False), ("12.4", 8, False)):
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i, major=major: (major, 0))
        assert check(0) is want, (cuda, major)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert check(0) is False


_NO_GDC_SCRIPT = """
import sys
import types

import triton.language.extra.cuda as real

fake = types.ModuleType(real.__name__)  # a Triton without the PDL instructions
fake.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("gdc")})
sys.modules[real.__name__] = fake
import torch

from ragcompress.kv.fast import _pdl
from ragcompress.kv.fast._triton import add_rmsnorm

assert not _pdl.AVAILABLE and not _pdl.pdl_on(torch.zeros(1))
x, w = torch.randn(4, 64), torch.ones(64)
res, out = add_rmsnorm(x, x, w, 1e-6)
want = 2 * x * torch.rsqrt((2 * x).pow(2).mean(-1, keepdim=True) + 1e-6)
assert torch.allclose(res, 2 * x) and torch.allclose(out, want, atol=1e-5), (out - want).abs().max()
print("ok")
"""


def test_a_triton_without_dependent_launch_still_runs_the_step_kernels() -> None:
    """With a Triton that lacks ``gdc_wait`` / ``gdc_launch_dependents`` (the project takes torch
    from 2.4), the kernels import, run (interpreted) and compile for sm_90 without PDL."""
    assert run_interpreted(_NO_GDC_SCRIPT).strip().endswith("ok")
