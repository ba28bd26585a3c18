import statistics, time, sys
import torch
sys.path.insert(0, "benchmarks")
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_stored import stored_chunks
from ragcompress.kv.fast import FastGenerator, PackedChunk
import ragcompress
torch.manual_seed(0)
model = build_model("llama3-8b", "cuda", torch.bfloat16)
cfg = model.config
L, H = cfg.num_hidden_layers, cfg.num_key_value_heads
d = cfg.hidden_size // cfg.num_attention_heads
for ctx in (10240, 32768):
    p, n = 64, 512
    kv = [(torch.randn(H, ctx, d, device="cuda", dtype=torch.bfloat16), torch.randn(H, ctx, d, device="cuda", dtype=torch.bfloat16)) for _ in range(L)]
    sizes = [n] * ((ctx - p) // n); starts = [p + i * n for i in range(len(sizes))]
    prefix = PackedChunk.from_layers([k[:, :p] for k, _ in kv], [v[:, :p] for _, v in kv], p, 0)
    chunks = stored_chunks(kv, starts, sizes)
    packed = [PackedChunk.from_layers([k[:, s:s+n] for k, _ in kv], [v[:, s:s+n] for _, v in kv], n, s) for s in starts]
    fast = FastGenerator(model, capacity=ctx + 64, max_question=32, max_new_tokens=4, buckets=(32,))
    for name, cs in (("stored", chunks), ("packed", packed)):
        hs, ts = [], []
        for i in range(23):
            torch.cuda.synchronize(); t = time.perf_counter(); fast.load(prefix, cs); h = time.perf_counter() - t
            torch.cuda.synchronize(); tt = time.perf_counter() - t
            if i >= 3: hs.append(h * 1e3); ts.append(tt * 1e3)
        print(f"{ragcompress.__file__.split('/')[-3]} ctx {ctx} {name}: load host {statistics.median(hs):.2f} ms, host+gpu {statistics.median(ts):.2f} ms", flush=True)
    del kv, chunks, packed, fast, prefix
    torch.cuda.empty_cache()
