"""Where blend_question's draft time goes on the fast engine (8B shape, random bf16)."""
import torch
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_modes import random_request
from ragcompress_bench.ttft_timing import best_of
from ragcompress.kv.fast import PackedChunk
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.assembly.draft import draft_answer

torch.manual_seed(0)
model = build_model("llama3-8b", "cuda", torch.bfloat16)
fast = FastGenerator(model, capacity=32768, max_question=32, max_new_tokens=16, max_batch=1, buckets=(32,))
fast.warmup([1], (32,))
dev = model.device

def t(fn, n=3):
    return best_of(fn, n)

for ctx in (10240, 32768):
    prefix, chunks, q = random_request(model, ctx)
    p = 64
    packed = PackedChunk.from_prefix(prefix)
    mode = build_assembly({"name": "blend_question", "recompute": 0.15, "draft_tokens": 4})
    packed_chunks = [PackedChunk.from_chunk(c) for c in chunks] if hasattr(PackedChunk, "from_chunk") else None
    out = {}
    out["load_stored"], _ = t(lambda: fast.load(packed, chunks))
    def steps(n):
        fast.load(packed, chunks)
        toks = []
        for h in fast.steps([q], n):
            toks.append(h[0])
        return toks
    out["load+steps1"], _ = t(lambda: steps(1))
    out["load+steps4"], draft = t(lambda: steps(4))
    out["repair(draft)"], _ = t(lambda: mode.repair(model, prefix, chunks, q, draft))
    bq = build_assembly({"name": "blend_question", "recompute": 0.15})
    out["repair(no draft, bq)"], _ = t(lambda: bq.repair(model, prefix, chunks, q))
    ctx_ = bq.repair(model, prefix, chunks, q)
    out["write_fast"], _ = t(lambda: mode.write_fast(fast, ctx_))
    out["load_fast(draft4)"], _ = t(lambda: mode.load_fast(fast, packed, model, prefix, chunks, q))
    out["load_fast(bq)"], _ = t(lambda: bq.load_fast(fast, packed, model, prefix, chunks, q))
    # eager draft over a concat context
    from ragcompress.kv.assembly.concat import Concat
    cc = Concat().prepare(model, prefix, chunks, q)
    out["eager draft 4"], _ = t(lambda: draft_answer(model, cc, q, 4))
    out["eager draft 1"], _ = t(lambda: draft_answer(model, cc, q, 1))
    print(ctx, {k: round(v, 1) for k, v in out.items()}, flush=True)
