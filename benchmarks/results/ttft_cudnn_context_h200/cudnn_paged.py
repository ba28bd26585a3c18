"""cuDNN's paged attention (cudnn-frontend's SDPA with K/V block tables) on the chunk pool's
layout, against the library's paged Triton kernel, one layer at a time under a CUDA graph.

    pip install nvidia-cudnn-frontend
    PYTHONPATH=$PWD python3 benchmarks/results/ttft_cudnn_context_h200/cudnn_paged.py

The pool is (slots, layers, kv_heads, D), cut into blocks of 64 slots; a request's blocks in a
shuffled order. cuDNN takes the folded queries (kv_heads heads of R = T*G rows) once per
sequence: "segments" runs S sequences of consecutive table entries (speed only: one rotation
for all), "chunks" runs one sequence per 512-token chunk (what per-chunk RoPE deltas need:
each sequence its own rotated queries). µs a layer over eight layers; merged output's largest
difference from a dense softmax over the same keys (no rotation: deltas 0). A diagnostic
script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from cudnn_context import LAYERS, graph_us  # this folder's other script: the same timing

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}
CONTEXTS = (10240, 32768, 131072)
TOKENS, BS, CHUNK = 32, 64, 512


def container(lay: torch.Tensor, nblocks: int) -> torch.Tensor:
    """A layer's pool view (slots, kvh, D), slot stride LAYERS*kvh*D, as cuDNN's container
    (blocks, kvh, BS, D), strided in place."""
    kvh, d = lay.shape[1], lay.shape[2]
    return lay.as_strided((nblocks, kvh, BS, d), (BS * lay.stride(0), d, lay.stride(0), 1))


def cudnn_paged(cudnn: Any, handle: Any, qf: torch.Tensor, kpool: torch.Tensor, vpool: torch.Tensor,
                table: torch.Tensor, seq_kv: torch.Tensor, scale: float):  # fmt: skip
    """A built graph and its runner: qf (B, kvh, R, D) contiguous, k/vpool layer views
    (blocks, kvh, BS, D) strided, table (B, 1, blocks_per_seq, 1) int32, seq_kv (B, 1, 1, 1)."""
    b, kvh, r, _ = qf.shape
    graph = cudnn.pygraph(
        io_data_type=cudnn.data_type.BFLOAT16,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )
    q = graph.tensor_like(qf)
    kc, vc = graph.tensor_like(kpool[0]), graph.tensor_like(vpool[0])
    tk, tv = graph.tensor_like(table), graph.tensor_like(table)
    sq_t = torch.full((b, 1, 1, 1), r, dtype=torch.int32, device=qf.device)
    sq, skv = graph.tensor_like(sq_t), graph.tensor_like(seq_kv)
    o, stats = graph.sdpa(
        name="sdpa", q=q, k=kc, v=vc, is_inference=False, attn_scale=scale, use_causal_mask=False,
        use_padding_mask=True, seq_len_q=sq, seq_len_kv=skv, paged_attention_k_table=tk,
        paged_attention_v_table=tv, paged_attention_max_seq_len_kv=int(table.shape[2]) * BS,
    )  # fmt: skip
    out = torch.empty_like(qf)
    lse = torch.empty(b, kvh, r, 1, dtype=torch.float32, device=qf.device)
    o.set_output(True).set_dim(list(out.shape)).set_stride(list(out.stride()))
    stats.set_output(True).set_data_type(cudnn.data_type.FLOAT)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    ws = torch.empty(graph.get_workspace_size(), device=qf.device, dtype=torch.uint8)

    def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
        pack = {
            q: qf,
            kc: kpool[i],
            vc: vpool[i],
            tk: table,
            tv: table,
            sq: sq_t,
            skv: seq_kv,
            o: out,
            stats: lse,
        }
        graph.execute(pack, ws, handle=handle)
        return out, lse

    return run


def main() -> None:
    import cudnn

    from ragcompress.kv.fast.paged import paged_context_reference  # noqa: F401 - the library's twin exists

    torch.manual_seed(0)
    dev = torch.device("cuda")
    handle = cudnn.create_handle()
    print(torch.cuda.get_device_name(), torch.__version__, "cudnn backend", cudnn.backend_version(),
          "frontend", cudnn.__version__)  # fmt: skip
    for shape, (heads, kvh, d) in SHAPES.items():
        g = heads // kvh
        r = TOKENS * g
        for length in CONTEXTS:
            nblocks = length // BS
            kall = torch.randn(nblocks * BS, LAYERS, kvh, d, device=dev, dtype=torch.bfloat16)
            vall = torch.randn_like(kall)

            kp = [container(kall[:, i], nblocks) for i in range(LAYERS)]
            vp = [container(vall[:, i], nblocks) for i in range(LAYERS)]
            order = torch.randperm(nblocks, device=dev).to(torch.int32)
            q = torch.randn(TOKENS, heads, d, device=dev, dtype=torch.bfloat16)
            fold = q.view(TOKENS, kvh, g, d).permute(1, 0, 2, 3).reshape(kvh, r, d)
            scale = d**-0.5
            # dense reference over layer 0, keys in table order
            k0 = kall[:, 0][(order.long()[:, None] * BS + torch.arange(BS, device=dev)).reshape(-1)]
            v0 = vall[:, 0][(order.long()[:, None] * BS + torch.arange(BS, device=dev)).reshape(-1)]
            s = torch.einsum("hrd,khd->hrk", fold.float(), k0.float()) * scale
            ref = torch.einsum("hrk,khd->hrd", torch.softmax(s, -1), v0.float())
            floor_us = 2 * length * kvh * d * 2 / 4.2e12 * 1e6
            flop = 4 * r * length * d * kvh
            print(f"\n## {shape}, {length} keys ({r} folded rows); K/V floor {floor_us:.1f} µs")
            print("| cuDNN paged | sequences | µs a layer | TFLOP/s | max abs diff from dense |")
            print("|---|---|---|---|---|")
            for name, per in (
                ("segments", nblocks // 16),
                ("segments", nblocks // 32),
                ("chunks", CHUNK // BS),
            ):
                try:
                    b = nblocks // per
                    table = order.view(b, 1, per, 1).contiguous()
                    seq_kv = torch.full((b, 1, 1, 1), per * BS, dtype=torch.int32, device=dev)
                    qf = fold.unsqueeze(0).expand(b, -1, -1, -1).contiguous()
                    run = cudnn_paged(cudnn, handle, qf, kp, vp, table, seq_kv, scale)
                    o, lse = run(0)
                    w = torch.softmax(lse[..., 0], 0)
                    got = (o.float() * w[..., None]).sum(0)
                    diff = (got - ref).abs().max().item()
                    us = graph_us(run)
                    print(f"| {name} | {b} | {us:.1f} | {flop / us / 1e6:.0f} | {diff:.1e} |")
                except Exception as exc:  # a record of what each call does
                    print(f"| {name} | {nblocks // per} | {type(exc).__name__}: {str(exc)[:200]} | | |")
                sys.stdout.flush()
            del kall, vall, kp, vp
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
