"""The fused step's norm kernels against the transformers modules they replace, on a device:
per-head QK-norms folded into the RoPE write (Qwen3's Llama-style RMSNorm, Gemma 3's) and
Gemma 3's sandwich (post-block norm, residual add, next norm) in one add+norm launch, whose
delta may come as a split product's fp32 partial sums. Shared by
the interpreted CPU test and the compiled GPU test. Also the gate's act·mul kernel."""

from __future__ import annotations

import torch


def check_norm_kernels(device: str) -> list[str]:
    """Raise AssertionError unless the kernels match the modules in fp32 and bf16; returns the
    comparisons made, ``kernel/module/dtype`` each."""
    from transformers.activations import ACT2FN
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import rotate_half
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    from ragcompress.kv.fast._triton import act_mul, add_rmsnorm, rope_write

    torch.manual_seed(1)
    done: list[str] = []
    for dt in (torch.float32, torch.bfloat16):
        # fp32: only rsqrt's last bits differ; bf16: one rounding of the module's may land an ulp away
        tol = {"atol": 1e-5, "rtol": 1e-5} if dt == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
        n, h, kvh, d = 3, 4, 2, 16
        fused = torch.randn(n, (h + 2 * kvh) * d, dtype=dt, device=device) * 3
        q, k, v = fused.split((h * d, kvh * d, kvh * d), dim=-1)  # column slices, as the step has them
        ang = torch.randn(n, d // 2, device=device) * 50
        cos, sin = (f(torch.cat([ang, ang], -1)).to(dt) for f in (torch.cos, torch.sin))
        slots = torch.tensor([4, 0, 2], device=device)
        for cls, gemma in ((Qwen3RMSNorm, False), (Gemma3RMSNorm, True)):
            qn, kn = cls(d, eps=1e-6).to(device, dt), cls(d, eps=1e-5).to(device, dt)
            qn.weight.data.uniform_(0.25, 2.0)
            kn.weight.data.uniform_(-0.5, 0.5)
            kb, vb = (torch.full((6, kvh, d), float("nan"), dtype=dt, device=device) for _ in range(2))
            norms = (qn.weight, 1e-6, kn.weight, 1e-5, gemma)
            qo = rope_write(q, k, v, cos, sin, slots, kb, vb, h, kvh, d, norms)
            c, s = cos[:, None], sin[:, None]
            with torch.no_grad():
                qr, kr = qn(q.reshape(n, h, d)), kn(k.reshape(n, kvh, d))
            torch.testing.assert_close(qo, qr * c + rotate_half(qr) * s, **tol)
            torch.testing.assert_close(kb[slots], kr * c + rotate_half(kr) * s, **tol)
            assert torch.equal(vb[slots], v.reshape(n, kvh, d))
            assert kb[[1, 3, 5]].isnan().all()  # rows not in slots untouched

            x, o = (torch.randn(n, 48, dtype=dt, device=device) * a for a in (1, 4))
            post, pre = cls(48, eps=1e-6).to(device, dt), cls(48, eps=1e-5).to(device, dt)
            post.weight.data.uniform_(0.25, 2.0)
            pre.weight.data.uniform_(-0.5, 0.5)
            res, out = add_rmsnorm(x, o, pre.weight, 1e-5, gemma, delta_norm=(post.weight, 1e-6))
            with torch.no_grad():
                want = x + post(o)
                torch.testing.assert_close(res, want, **tol)
                torch.testing.assert_close(out, pre(want), **tol)
            # a split product's fp32 partial sums: summed in order, rounded once, then the same
            # (bf16: the interpreter's fp32 -> bf16 cast may round an ulp off the GPU's)
            parts = torch.randn(3, n, 48, device=device) * 4
            whole = (parts[0] + parts[1] + parts[2]).to(dt)
            for dn in (None, (post.weight, 1e-6)):
                got = add_rmsnorm(x, parts, pre.weight, 1e-5, gemma, delta_norm=dn)
                want2 = add_rmsnorm(x, whole, pre.weight, 1e-5, gemma, delta_norm=dn)
                exact = {"atol": 0.0, "rtol": 0.0}
                for a, b in zip(got, want2, strict=True):
                    torch.testing.assert_close(a, b, **(tol if dt == torch.bfloat16 else exact))
            try:
                add_rmsnorm(x, parts[:, :2], pre.weight, 1e-5, gemma)
            except ValueError as e:
                assert "partial sums" in str(e)
            else:
                raise AssertionError("partial sums of the wrong rows were taken")
            done += [f"rope_write/{cls.__name__}/{dt}", f"add_rmsnorm/{cls.__name__}/{dt}"]
            done.append(f"add_rmsnorm_partials/{cls.__name__}/{dt}")
        # the gate's activation times up (LlamaMLP's SiLU, Gemma3MLP's tanh GELU), ragged columns
        gate_up = torch.randn(n, 2 * 1100, dtype=dt, device=device) * 3
        for act in ("silu", "gelu_pytorch_tanh"):
            g, u = gate_up[:, :1100], gate_up[:, 1100:]
            torch.testing.assert_close(act_mul(gate_up, act), (ACT2FN[act](g) * u).to(dt), **tol)
            done.append(f"act_mul/{act}/{dt}")
    return done


# every comparison check_norm_kernels makes: a test asserts none was skipped
CASES = sorted(
    f"{kernel}/{what}/{dt}"
    for dt in (torch.float32, torch.bfloat16)
    for kernel, whats in (
        ("rope_write", ("Qwen3RMSNorm", "Gemma3RMSNorm")),
        ("add_rmsnorm", ("Qwen3RMSNorm", "Gemma3RMSNorm")),
        ("add_rmsnorm_partials", ("Qwen3RMSNorm", "Gemma3RMSNorm")),
        ("act_mul", ("silu", "gelu_pytorch_tanh")),
    )
    for what in whats
)
