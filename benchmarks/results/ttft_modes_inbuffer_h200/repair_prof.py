"""Where blend_question's eager repair time goes (8B shape, random bf16), and a FlexAttention
job for the partial forward against the current packed SDPA job."""
import time
import torch
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_modes import random_request
from ragcompress_bench.ttft_timing import best_of
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.assembly import recompute as rc
from ragcompress.kv.assembly.blend_attention import AttentionJob, _heads
from ragcompress.kv.assemble import assemble, concat_starts
from ragcompress.models.arch import arch_for
from torch.nn.attention.flex_attention import flex_attention, create_block_mask

torch.manual_seed(0)
model = build_model("llama3-8b", "cuda", torch.bfloat16)
dev = model.device
arch = arch_for(model)
flex = torch.compile(flex_attention, dynamic=True)


from types import SimpleNamespace
DUMMY = [SimpleNamespace(mask=torch.zeros(1, 1, 1, 1, device=dev, dtype=torch.bfloat16))]


class Zero(AttentionJob):
    def __init__(self, config):
        self.config, self.windows, self.blocks = config, (), DUMMY

    def attend(self, query, key, value, scaling, layer):
        b, heads, n, d, _, _ = _heads(query, key)
        return query.new_zeros(b, n, heads, d)


class Flex(AttentionJob):
    def __init__(self, config, positions, chosen):
        self.config, self.windows, self.blocks = config, (), DUMMY
        sp = positions
        qp = positions[chosen]

        def mask_mod(b, h, q, kv):
            return sp[kv] <= qp[q]

        self.bm = create_block_mask(mask_mod, None, None, int(chosen.numel()), int(sp.numel()), device=dev, _compile=True)

    def attend(self, query, key, value, scaling, layer):
        out = flex(query, key, value, block_mask=self.bm, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2)


orig_job = rc.packed_job


def t(fn, n=3):
    return best_of(fn, n)


for ctx in (10240, 32768):
    prefix, chunks, q = random_request(model, ctx)
    p = 64
    bq = build_assembly({"name": "blend_question", "recompute": 0.15})
    out = {}
    out["assemble"], (cache, position) = t(lambda: assemble(prefix, chunks, arch, model.config))
    out["slot_map"], slots = t(lambda: rc.slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), dev))
    out["score"], scores = t(lambda: bq.score(model, cache, slots, q, position))
    k = round(0.15 * slots.chunk_slots)
    order = torch.sort(scores[slots.candidates], descending=True, stable=True).indices[:k]
    chosen = torch.sort(slots.candidates[order]).values
    out["k"] = k
    out["recompute_packed"], _ = t(lambda: rc.recompute_slots(model, cache, slots, chosen))
    rc.packed_job = lambda m, pos, ch, dt: Zero(m.config)
    out["recompute_noattn"], _ = t(lambda: rc.recompute_slots(model, cache, slots, chosen))
    t0 = time.perf_counter()
    rc.packed_job = lambda m, pos, ch, dt: Flex(m.config, pos, ch)
    rc.recompute_slots(model, cache, slots, chosen); torch.cuda.synchronize()
    out["flex_first_s"] = time.perf_counter() - t0
    out["recompute_flex"], _ = t(lambda: rc.recompute_slots(model, cache, slots, chosen))
    out["flex_mask_only"], _ = t(lambda: Flex(model.config, slots.positions, chosen))
    # agreement: fresh caches, packed vs flex
    res = {}
    for name, job in (("packed", orig_job), ("flex", lambda m, pos, ch, dt: Flex(m.config, pos, ch))):
        rc.packed_job = job
        c2, _ = assemble(prefix, chunks, arch, model.config)
        rc.recompute_slots(model, c2, slots, chosen)
        res[name] = (c2.layers[-1].keys.float(), c2.layers[-1].values.float())
    rc.packed_job = orig_job
    dk = (res["packed"][0] - res["flex"][0]).abs().max().item()
    dv = (res["packed"][1] - res["flex"][1]).abs().max().item()
    out["maxdiff_k_v_last"] = (round(dk, 4), round(dv, 4), round(res["packed"][1].abs().max().item(), 3))
    out["repair_total"], _ = t(lambda: bq.repair(model, prefix, chunks, q))
    print(ctx, {kk: (round(v, 2) if isinstance(v, float) else v) for kk, v in out.items()}, flush=True)
    del cache, prefix, chunks, res
    torch.cuda.empty_cache()
