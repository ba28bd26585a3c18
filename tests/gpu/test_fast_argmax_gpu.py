"""The step's greedy token compiled on CUDA (ragcompress/kv/fast/_argmax.py): torch.argmax's
index on a 128,256-logit vocabulary (Llama-3's) and on the planted rows of the CPU test
(tests/kv/test_fast_argmax.py), batch 1 and 5, fp32 and bf16, inside a captured CUDA graph."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast.greedy import greedy
from tests.kv.test_fast_argmax import planted


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_greedy_matches_torch_argmax(dtype: torch.dtype) -> None:
    x = planted(5000, dtype).cuda()
    assert torch.equal(greedy(x), x.argmax(-1))
    big = torch.randn(5, 128256, device="cuda").to(dtype)
    big[0, [70000, 9000]] = 100.0
    for rows in (big[:1], big):
        assert torch.equal(greedy(rows), rows.argmax(-1))


@pytest.mark.gpu
def test_gpu_greedy_replays_in_a_graph() -> None:
    x = torch.randn(1, 128256, device="cuda")
    greedy(x)  # compiled before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = greedy(x)
    for seed in range(3):
        x.copy_(torch.randn(1, 128256, generator=torch.Generator().manual_seed(seed)).cuda())
        graph.replay()
        assert torch.equal(out, x.argmax(-1))
