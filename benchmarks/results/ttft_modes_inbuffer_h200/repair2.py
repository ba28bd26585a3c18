"""(A) repair inside the engine's buffer vs assemble + repair + write; (B) split attention
(flash over the fully visible prefix + masked efficient over the diagonal, LSE-merged) vs the
packed blocks; (C) where the probe's time goes."""
import torch
from transformers import DynamicCache
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_modes import random_request
from ragcompress_bench.ttft_timing import best_of
from ragcompress.kv.fast import PackedChunk
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.assembly import recompute as rc
from ragcompress.kv.assembly.blend_attention import packed_blocks
from ragcompress.kv.assemble import concat_starts

torch.manual_seed(0)
model = build_model("llama3-8b", "cuda", torch.bfloat16)
dev = model.device
fast = FastGenerator(model, capacity=32768, max_question=32, max_new_tokens=16, max_batch=1, buckets=(32,))
fast.warmup([1], (32,))
buf = fast.buffer if hasattr(fast, "buffer") else fast.engine.buffer

_of = rc.ScatterLayer.of
rc.ScatterLayer.of = classmethod(lambda cls, layer: layer if isinstance(layer, rc.ScatterLayer) else _of.__func__(cls, layer))


def view_cache(n):
    cache = DynamicCache()
    layers = []
    for l in range(buf.layers):
        k = buf.ctx_keys[:n, l].permute(1, 0, 2)[None]
        v = buf.ctx_values[:n, l].permute(1, 0, 2)[None]
        layer = rc.ScatterLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        layers.append(layer)
    cache.layers = layers
    return cache


def t(fn, n=3):
    return best_of(fn, n)


def split_attend(q, key, value, blocks, positions, chosen, group, scale):
    outs = []
    pos = positions[chosen]
    for blk in blocks:
        qb = q[:, :, blk.start * group: blk.stop * group]
        cut = int(torch.searchsorted(positions, pos[blk.start], right=True)) // 16 * 16
        cut = min(cut, blk.end)
        if cut >= 64:
            o1, l1 = torch.ops.aten._scaled_dot_product_flash_attention(qb, key[:, :, :cut], value[:, :, :cut], 0.0, False, False, scale=scale)[:2]
            m = blk.mask[..., cut: blk.end].contiguous().expand(qb.shape[0], qb.shape[1], -1, -1)
            o2, l2 = torch.ops.aten._scaled_dot_product_efficient_attention(qb, key[:, :, cut: blk.end], value[:, :, cut: blk.end], m, True, 0.0, False, scale=scale)[:2]
            l2 = l2[..., : qb.shape[2]]
            l = torch.logaddexp(l1, l2)
            o = o1.float() * (l1 - l).exp()[..., None] + o2.float() * (l2 - l).exp()[..., None]
            outs.append(o.to(q.dtype))
        else:
            outs.append(torch.nn.functional.scaled_dot_product_attention(qb, key[:, :, : blk.end], value[:, :, : blk.end], attn_mask=blk.mask, scale=scale))
    return torch.cat(outs, dim=2)


def packed_attend(q, key, value, blocks, group, scale):
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(q[:, :, b.start * group: b.stop * group], key[:, :, : b.end], value[:, :, : b.end], attn_mask=b.mask, scale=scale) for b in blocks], dim=2)


for ctx in (10240, 32768):
    prefix, chunks, q = random_request(model, ctx)
    p = 64
    packed = PackedChunk.from_prefix(prefix)
    bq = build_assembly({"name": "blend_question", "recompute": 0.15})
    out = {}
    # (A) current: repair (assemble inside) + write
    def current():
        c = bq.repair(model, prefix, chunks, q)
        return bq.write_fast(fast, c), c
    out["current_repair+write"], (_, ref_ctx) = t(current)
    ref = ref_ctx.cache

    def inbuf():
        fast.load(packed, chunks)
        n = buf.ctx_len
        slots = rc.slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), dev)
        cache = view_cache(n)
        position = buf.next_position
        k = round(0.15 * slots.chunk_slots)
        scores = bq.score(model, cache, slots, q, position)[slots.candidates]
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        chosen = torch.sort(slots.candidates[order]).values
        rc.recompute_slots(model, cache, slots, chosen)
        return chosen, slots
    out["inbuf_load+repair"], (chosen, slots) = t(inbuf)
    out["load_only"], _ = t(lambda: fast.load(packed, chunks))
    n = buf.ctx_len
    dk = max((buf.ctx_keys[:n, l].permute(1, 0, 2).float() - ref.layers[l].keys[0].float()).abs().max().item() for l in (0, 15, 31))
    dv = max((buf.ctx_values[:n, l].permute(1, 0, 2).float() - ref.layers[l].values[0].float()).abs().max().item() for l in (0, 15, 31))
    out["inbuf_vs_current_maxdiff_kv"] = (round(dk, 4), round(dv, 4))
    print(ctx, out, flush=True)
    # (B) attention split on layer-0-like tensors
    k_, v_ = ref.layers[5].keys, ref.layers[5].values  # (1, 8, n, 128)
    group = 4
    blocks = packed_blocks(slots.positions, chosen, group, torch.bfloat16)
    qq = torch.randn(1, 8, int(chosen.numel()) * group, 128, device=dev, dtype=torch.bfloat16)
    scale = 128 ** -0.5
    a = packed_attend(qq, k_, v_, blocks, group, scale)
    b = split_attend(qq, k_, v_, blocks, slots.positions, chosen, group, scale)
    out["split_maxdiff"] = round((a.float() - b.float()).abs().max().item(), 4)
    out["attn_packed_x32"], _ = t(lambda: [packed_attend(qq, k_, v_, blocks, group, scale) for _ in range(32)])
    out["attn_split_x32"], _ = t(lambda: [split_attend(qq, k_, v_, blocks, slots.positions, chosen, group, scale) for _ in range(32)])
    # strided buffer views, as the in-buffer path reads them
    kb = buf.ctx_keys[:n, 5].permute(1, 0, 2)[None]
    vb = buf.ctx_values[:n, 5].permute(1, 0, 2)[None]
    out["attn_packed_strided_x32"], _ = t(lambda: [packed_attend(qq, kb, vb, blocks, group, scale) for _ in range(32)])
    for nb in (16, 32):
        import ragcompress.kv.assembly.blend_attention as ba
        old = ba.MAX_BLOCKS
        ba.MAX_BLOCKS = nb
        bl = packed_blocks(slots.positions, chosen, group, torch.bfloat16)
        ba.MAX_BLOCKS = old
        out[f"attn_packed_{nb}blocks_x32"], _ = t(lambda: [packed_attend(qq, k_, v_, bl, group, scale) for _ in range(32)])
        out[f"attn_split_{nb}blocks_x32"], _ = t(lambda: [split_attend(qq, k_, v_, bl, slots.positions, chosen, group, scale) for _ in range(32)])
    # (C) the probe
    fast.load(packed, chunks)
    cache = view_cache(buf.ctx_len)
    out["score"], _ = t(lambda: bq.score(model, cache, slots, q, buf.next_position))
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        bq.score(model, cache, slots, q, buf.next_position); torch.cuda.synchronize()
    ev = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in ev) / 1e3
    out["score_gpu_kernel_ms"] = round(cuda_total, 2)
    print(ctx, {kk: (round(v, 2) if isinstance(v, float) else v) for kk, v in out.items()}, flush=True)
    print(ev.table(sort_by="self_device_time_total", row_limit=8), flush=True)
    del ref, ref_ctx, prefix, chunks, cache
    torch.cuda.empty_cache()
