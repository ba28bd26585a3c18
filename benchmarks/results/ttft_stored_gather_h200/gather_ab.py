"""Why stored chunks (one tensor set per layer, heads outermost) write slower than packed ones
(rows already in the buffer's order): the library's dense gather over both forms of the same 32K
of bf16 K/V, and a variant whose programs take 2-D tiles (8 heads x 8 tokens) of a stored layer,
so that both its reads (per head) and its writes (per token) are 2 KB runs instead of 256-byte
rows 64 KB apart. 8B Llama shape. On the GPU, from the repository root:

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_stored_gather_h200/gather_ab.py
"""

from __future__ import annotations

import statistics

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._gather import DENSE_FIELDS, gather_dense

L, KVH, D, N, CHUNKS = 32, 8, 128, 512, 64


@triton.jit
def _tiled_kernel(
    base, dst_k, dst_v, table, freq_ptr, HALF: tl.constexpr, BLOCK_R: tl.constexpr, TH: tl.constexpr, NF: tl.constexpr  # noqa: E501
):  # fmt: skip
    c = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    row = table + c * NF
    k_off = tl.load(row)
    v_off = tl.load(row + 1)
    rows = tl.load(row + 2)
    dst_row = tl.load(row + 3)
    delta = tl.load(row + 4).to(tl.float32)
    run = tl.load(row + 5)
    stride = tl.load(row + 6)
    heads = rows // run
    th = tl.minimum(heads, TH)  # heads per tile (a packed entry is one run: 1)
    tt = BLOCK_R // th  # tokens per tile
    tblocks = (run + tt - 1) // tt
    lane = tl.arange(0, BLOCK_R).to(tl.int64)
    head = (blk // tblocks) * th + lane % th
    tok = (blk % tblocks) * tt + lane // th
    ok = (head < heads) & (tok < run) & (lane < th * tt)
    r = head * run + tok
    i = tl.arange(0, HALF)
    m = ok[:, None]
    Dd: tl.constexpr = 2 * HALF
    src = r[:, None] * Dd + i[None, :]
    drow = dst_row + tok * stride + head
    dst = drow[:, None] * Dd + i[None, :]
    ang0 = delta * tl.load(freq_ptr + i)
    cs = tl.cos(ang0)[None, :]
    sn = tl.sin(ang0)[None, :]
    x1 = tl.load(base + k_off + src, mask=m).to(tl.float32)
    x2 = tl.load(base + k_off + src + HALF, mask=m).to(tl.float32)
    v1 = tl.load(base + v_off + src, mask=m)
    v2 = tl.load(base + v_off + src + HALF, mask=m)
    tl.store(dst_k + dst, (x1 * cs - x2 * sn).to(dst_k.dtype.element_ty), mask=m)
    tl.store(dst_k + dst + HALF, (x2 * cs + x1 * sn).to(dst_k.dtype.element_ty), mask=m)
    tl.store(dst_v + dst, v1, mask=m)
    tl.store(dst_v + dst + HALF, v2, mask=m)


def timed(fn, repeats=20) -> float:
    times = []
    for _ in range(repeats + 2):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[2:])


def main() -> None:
    dev = torch.device("cuda")
    cap = CHUNKS * N
    ctx_k = torch.zeros(cap, L, KVH, D, device=dev, dtype=torch.bfloat16)
    ctx_v = torch.zeros_like(ctx_k)
    freq = (1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev).float() / D))).contiguous()
    g = torch.Generator(device=dev).manual_seed(0)
    # one source tensor per form, offsets counted from ctx_k (the library's convention)
    packed = [torch.randn(N * L * KVH, D, device=dev, generator=g).bfloat16() for _ in range(2 * CHUNKS)]
    stored = [torch.randn(KVH * N, D, device=dev, generator=g).bfloat16() for _ in range(2 * CHUNKS * L)]

    def off(t: torch.Tensor) -> int:
        return (t.data_ptr() - ctx_k.data_ptr()) // 2

    stride = L * KVH
    p_rows = [[off(packed[2 * c]), off(packed[2 * c + 1]), N * L * KVH, c * N * stride, 7, N * L * KVH, 1]
              for c in range(CHUNKS)]  # fmt: skip
    s_rows = [[off(stored[2 * (c * L + li)]), off(stored[2 * (c * L + li) + 1]), KVH * N, c * N * stride + li * KVH, 7,  # noqa: E501
               N, stride] for c in range(CHUNKS) for li in range(L)]  # fmt: skip
    assert len(DENSE_FIELDS) == 7
    p_tab, s_tab = (torch.tensor(r, dtype=torch.long, device=dev) for r in (p_rows, s_rows))
    gbytes = 2 * 2 * cap * L * KVH * D * 2 / 1e9  # K and V, read and written
    copy_src = torch.randn_like(ctx_k)

    def lib(tab: torch.Tensor, most: int):
        return lambda: gather_dense(ctx_k, ctx_k, ctx_v, tab, freq, most, D)

    def tiled():
        grid = (s_tab.shape[0], triton.cdiv(KVH * N, 64) + 1)
        _tiled_kernel[grid](
            ctx_k, ctx_k, ctx_v, s_tab, freq, HALF=D // 2, BLOCK_R=64, TH=8, NF=7, num_warps=4
        )

    lib(s_tab, KVH * N)()
    want_k, want_v = ctx_k.clone(), ctx_v.clone()
    ctx_k.zero_()
    ctx_v.zero_()
    tiled()
    same = torch.equal(ctx_k, want_k) and torch.equal(ctx_v, want_v)
    rows = [
        (
            "torch copy of the same K/V bytes (both tensors)",
            timed(lambda: (ctx_k.copy_(copy_src), ctx_v.copy_(copy_src))),
        ),
        ("library gather, packed chunks (64 entries)", timed(lib(p_tab, N * L * KVH))),
        ("library gather, stored chunks (2,048 entries)", timed(lib(s_tab, KVH * N))),
        ("2-D tiles (8 heads x 8 tokens), stored chunks", timed(tiled)),
    ]
    print(
        f"{torch.cuda.get_device_name()}; 32K tokens of 8B-shaped K/V, {gbytes:.1f} GB moved; "
        f"tiled == library: {same}\n"
    )
    print("| write | ms | GB/s |\n|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {gbytes / ms * 1e3:.0f} |")


if __name__ == "__main__":
    main()
