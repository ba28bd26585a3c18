"""blend_question's probe, same call: before (question K/V appended by concatenation, cache
restored) vs after (ProbeLayer: K/V held aside), over the engine's buffer views and over an
assembled contiguous cache (8B shape, random bf16)."""
import sys
import torch
from transformers import DynamicCache
sys.path.insert(0, ".devcarry/exp/oldprobe")
import old_bq
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_modes import random_request
from ragcompress_bench.ttft_timing import best_of
from ragcompress.kv.fast import PackedChunk
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.assembly.blend_question import question_attention
from ragcompress.kv.assembly.recompute import ScatterLayer
from ragcompress.kv.assembly.selective import concat_slots
from ragcompress.kv.assemble import assemble
from ragcompress.models.arch import arch_for

torch.manual_seed(0)
model = build_model("llama3-8b", "cuda", torch.bfloat16)
dev = model.device
fast = FastGenerator(model, capacity=32768, max_question=32, max_new_tokens=16, max_batch=1, buckets=(32,))
fast.warmup([1], (32,))
buf = fast.buffer


def t_(fn, n=5):
    return best_of(fn, n)


for ctx in (10240, 32768):
    prefix, chunks, q = random_request(model, ctx)
    p = 64
    fast.load(PackedChunk.from_prefix(prefix), chunks)
    slots = concat_slots(model, prefix, chunks)
    views = DynamicCache()
    views.layers = [ScatterLayer.over(k, v) for k, v in buf.context_layers()]
    dense, position = assemble(prefix, chunks, arch_for(model), model.config)
    out = {}
    for name, c in (("views", views), ("dense", dense)):
        out[f"before_{name}"], a = t_(lambda: old_bq.question_attention(model, c, q, position, slots.positions, 8))
        out[f"after_{name}"], b = t_(lambda: question_attention(model, c, q, position, slots.positions, 8))
        out[f"rel_diff_{name}"] = round(((a - b).norm() / a.norm()).item(), 6)
    print(ctx, out, flush=True)
    del prefix, chunks, views, dense
    torch.cuda.empty_cache()
