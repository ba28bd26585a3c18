"""Recompute attention at 10K/32K (8B shape, one layer x32): the packed SDPA blocks vs one
varlen flash call over every block's fully visible prefix + masked bands (efficient) + merge."""
import time
import torch
from ragcompress.kv.assembly.blend_attention import packed_blocks
import ragcompress.kv.assembly.blend_attention as ba

dev = "cuda"
torch.manual_seed(0)
kvh, g, d = 8, 4, 128
scale = d ** -0.5


def t(fn, n=5):
    fn(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(n):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); best = min(best, time.perf_counter() - t0)
    return round(best * 1e3, 2)


def packed(q, key, value, blocks):
    qs = q.reshape(1, kvh, g, -1, d).transpose(2, 3).reshape(1, kvh, -1, d)
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(qs[:, :, b.start * g: b.stop * g], key[:, :, : b.end], value[:, :, : b.end], attn_mask=b.mask, scale=scale) for b in blocks], dim=2)


def prefix_pass(qv, kv_k, kv_v, cu_q, cu_k, used, max_q, max_k):
    out = torch.ops.aten._flash_attention_forward(qv, kv_k, kv_v, cu_q, cu_k, max_q, max_k, 0.0, False, False, scale=scale, seqused_k=used)
    return out[0], out[1]


for S in (10240, 32768):
    positions = torch.arange(S, device=dev)
    k = round(0.15 * S)
    chosen = torch.sort(torch.randperm(S - 64, device=dev)[:k] + 64).values
    key = torch.randn(1, kvh, S, d, device=dev, dtype=torch.bfloat16)
    value = torch.randn(1, kvh, S, d, device=dev, dtype=torch.bfloat16)
    q = torch.randn(1, kvh * g, k, d, device=dev, dtype=torch.bfloat16)
    res = {"k": k}
    for nb in (8, 16, 32):
        old = ba.MAX_BLOCKS
        ba.MAX_BLOCKS = nb
        blocks = packed_blocks(positions, chosen, g, torch.bfloat16)
        ba.MAX_BLOCKS = old
        res[f"packed{nb}"] = t(lambda: [packed(q, key, value, blocks) for _ in range(32)])
        # varlen: q (k, heads, d); keys (S, kvh, d)
        qv = q[0].transpose(0, 1).contiguous()
        kk = key[0].transpose(0, 1)
        vv = value[0].transpose(0, 1)
        starts = torch.tensor([b.start for b in blocks] + [k], device=dev, dtype=torch.int32)
        cuts = torch.stack([chosen[b.start] for b in blocks]).to(torch.int32) // 16 * 16  # keys every row sees
        cu_k = torch.zeros(len(blocks) + 1, device=dev, dtype=torch.int32)
        max_q = max(b.stop - b.start for b in blocks)
        res[f"flash_prefix{nb}"] = t(lambda: [prefix_pass(qv, kk, vv, starts, cu_k, cuts, max_q, S) for _ in range(32)])
        o1, l1 = prefix_pass(qv, kk, vv, starts, cu_k, cuts, max_q, S)
        res[f"lse_shape{nb}"] = tuple(l1.shape)
        # bands: keys [cut, end) with the mask slice, efficient attention with lse
        qs = q.reshape(1, kvh, g, -1, d).transpose(2, 3).reshape(1, kvh, -1, d)
        cl = cuts.tolist()
        bands = [(b, c, b.mask[..., c: b.end].contiguous().expand(1, kvh, -1, -1)) for b, c in zip(blocks, cl)]

        def band_pass():
            return [torch.ops.aten._scaled_dot_product_efficient_attention(qs[:, :, b.start * g: b.stop * g], key[:, :, c: b.end], value[:, :, c: b.end], m, True, 0.0, False, scale=scale)[:2] for b, c, m in bands]
        res[f"bands{nb}"] = t(lambda: [band_pass() for _ in range(32)])
        # correctness of the combination on one call
        ref = packed(q, key, value, blocks)  # (1, kvh, k*g, d) token-major stacked
        ob = band_pass()
        o2 = torch.cat([o for o, _ in ob], dim=2)  # (1, kvh, k*g, d)
        l2 = torch.cat([l[..., : (b.stop - b.start) * g] for (o, l), (b, _, _) in zip(ob, bands)], dim=2)  # (1, kvh, k*g)
        # flash out (k, heads, d) -> stacked (1, kvh, k*g, d): head = kv*g + j, row = t*g + j
        o1s = o1.view(k, kvh, g, d).permute(1, 0, 2, 3).reshape(1, kvh, k * g, d)
        l1r = l1 if l1.dim() == 2 else torch.cat([l1[i, :, : b.stop - b.start] for i, b in enumerate(blocks)], dim=1)
        l1s = l1r[:, :k].view(kvh, g, k).permute(0, 2, 1).reshape(1, kvh, k * g)
        lse = torch.logaddexp(l1s, l2)
        comb = o1s.float() * (l1s - lse).exp()[..., None] + o2.float() * (l2 - lse).exp()[..., None]
        res[f"maxdiff{nb}"] = round((comb - ref.float()).abs().max().item(), 4)
    print(S, res, flush=True)
