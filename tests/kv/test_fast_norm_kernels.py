"""The fused step's norm kernels (QK-norms inside the RoPE write; Gemma 3's post-block norm
inside the add+norm launch) against the transformers modules, interpreted on the CPU; the GPU
test runs the same check compiled."""

from __future__ import annotations

import json

from tests.support.interpret import run_interpreted
from tests.support.norm_kernels import CASES


def test_norm_kernels_round_like_the_modules():
    """rope_write with Qwen3's and Gemma 3's per-head norms == norm then apply_rotary_pos_emb
    (rows outside the slots untouched); add_rmsnorm with a delta norm == post norm, residual
    add, next norm; act_mul == SiLU / tanh-GELU of the gate times up; fp32 and bf16."""
    out = run_interpreted(
        "import json; from tests.support.norm_kernels import check_norm_kernels; "
        "print(json.dumps(check_norm_kernels('cpu')))"
    )
    assert sorted(json.loads(out.strip().splitlines()[-1])) == CASES
