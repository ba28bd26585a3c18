"""blend_question's probe: the HF forward over buffer views (library) vs the fast engine's own
step run once without graphs with a probing cascade attention (8B shape, random bf16)."""
import torch
from transformers import DynamicCache
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_modes import random_request
from ragcompress_bench.ttft_timing import best_of
from ragcompress.kv.fast import PackedChunk
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.fast.attention import CascadeAttention, StepMeta, own_pass_reference
from ragcompress.kv.fast.shapes import _Shape
from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.assembly.recompute import ScatterLayer
from ragcompress.kv.assembly.selective import concat_slots

torch.manual_seed(0)
model = build_model("llama3-8b", "cuda", torch.bfloat16)
dev = model.device
fast = FastGenerator(model, capacity=32768, max_question=64, max_new_tokens=16, max_batch=1, buckets=(32, 64))
fast.warmup([1], (32,))
buf = fast.buffer


class ProbeCascade(CascadeAttention):
    def __init__(self, slots, length, voters):
        self.slots, self.first, self.length = slots, length - voters, length
        self.total = torch.zeros(slots, dtype=torch.float32, device=dev)

    def __call__(self, q, ctx_k, ctx_v, own_k, own_v, meta, scale, *, window=None, softcap=None):
        n, heads, d = q.shape
        kvh = ctx_k.shape[1]
        g = heads // kvh
        S = self.slots
        qf = q.float().view(n, kvh, g, d).permute(1, 2, 0, 3)
        kc = ctx_k[:S].float().permute(1, 0, 2).unsqueeze(1)
        s = torch.matmul(qf, kc.transpose(-1, -2)) * scale  # (kvh, g, N, S)
        lse_a = torch.logsumexp(s, dim=-1)
        o_b, lse_b = own_pass_reference(q, own_k, own_v, meta, scale)
        lse_bk = lse_b.view(n, kvh, g).permute(1, 2, 0)
        lse = torch.logaddexp(lse_a, lse_bk)
        p = torch.exp(s - lse.unsqueeze(-1))
        self.total += p[:, :, self.first: self.length].amax(dim=(0, 1, 2))
        vc = ctx_v[:S].float().permute(1, 0, 2).unsqueeze(1)
        o_a = torch.matmul(p, vc)  # already weighted by the total normaliser
        wb = torch.exp(lse_bk - lse).permute(2, 0, 1).reshape(n, heads, 1)
        o = o_a.permute(2, 0, 1, 3).reshape(n, heads, d) + o_b.float() * wb
        return o.to(q.dtype)


def engine_probe(question, voters=8):
    b, t = 1, fast.bucket(len(question))
    n = b * t
    args = torch.zeros(4 * n + b, dtype=torch.long, device=dev)
    meta = StepMeta(b, t, buf.region, fast.capacity, buf.ctx_len_t, torch.zeros(b, dtype=torch.int32, device=dev), splits=1, group=4)
    probe = ProbeCascade(buf.ctx_len, len(question), voters)
    shape = _Shape(b, t, args, meta, probe)
    p0 = buf.next_position
    ids = torch.zeros(t, dtype=torch.long)
    ids[: len(question)] = torch.tensor(question)
    host = torch.cat([ids, torch.arange(p0, p0 + t), torch.arange(t), torch.full((t,), t), torch.tensor([len(question) - 1])])
    fast._run(shape, host)
    return probe.total / 32


def t_(fn, n=5):
    return best_of(fn, n)


for ctx in (10240, 32768):
    prefix, chunks, q = random_request(model, ctx)
    p = 64
    packed = PackedChunk.from_prefix(prefix)
    bq = build_assembly({"name": "blend_question", "recompute": 0.15})
    fast.load(packed, chunks)
    slots = concat_slots(model, prefix, chunks)
    cache = DynamicCache()
    cache.layers = [ScatterLayer.over(k, v) for k, v in buf.context_layers()]
    out = {}
    out["hf_probe"], a = t_(lambda: bq.score(model, cache, slots, q, buf.next_position))
    out["engine_probe"], b = t_(lambda: engine_probe(q))
    k = round(0.15 * slots.chunk_slots)
    ta = set(torch.topk(a[slots.candidates], k).indices.tolist())
    tb = set(torch.topk(b[slots.candidates], k).indices.tolist())
    out["top15_overlap"] = round(len(ta & tb) / k, 4)
    out["rel_err"] = round(((a - b).norm() / a.norm()).item(), 5)
    # the engine's graphed prefill afterwards still gives its tokens (its region is rewritten)
    t1 = fast.prefill([q]).item()
    fast.load(packed, chunks)
    t2 = fast.prefill([q]).item()
    out["prefill_same_after_probe"] = t1 == t2
    print(ctx, out, flush=True)
    del prefix, chunks, cache
    torch.cuda.empty_cache()
