"""Same-process A/B of the host tier's streaming (issue #16): copies and gathers on one side
stream (before) against copies on their own stream and gathers on a high-priority one (after).

Llama-3-8B shape, random bf16 weights; per context, 512-token passages after a 64-token prefix,
each evicted to 40% of its tokens (knorm 0.6: the bytes and the host form of the bench's kvzip 0.6
chunks, without kvzip's reconstruction pass; which tokens survive does not matter for time) and
quantized int4/64, held as pinned ``HostChunk`` s. Columns: the same chunks packed on the GPU, the
old and the new streamer at 8-layer ranges (alternated, twice each), both at 4- and 16-layer
ranges, and all copies before the step (one range). Median ms of CUDA-event timings.

    python3 benchmarks/results/ttft_host_split_h200/host_ab.py [--contexts 10240,32768]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from ragcompress_bench.ttft_shapes import build_model, head_dim
from ragcompress_bench.ttft_timing import Clock, passage_sizes

from ragcompress.kv.chunk import DenseLayer, KVChunk
from ragcompress.kv.fast import FastGenerator, HostChunk, PackedChunk, QuantizedPackedChunk
from ragcompress.kv.fast.stream import HostStream
from ragcompress.kv.key import ChunkKey, tokens_digest
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.quantize import QuantizePress


class OneStream(HostStream):
    """The streamer as it was before this change (stream.py at ea0f86a): each range's copies
    queued on the side stream behind the previous range's gather."""

    def _queue(self, plan):  # type: ignore[no-untyped-def]
        buf, up, freq = self.buffer, plan.device_tables, plan.freq
        self.side.wait_event(plan.ready)
        for t in (*up.values(), freq):
            t.record_stream(self.side)
        self._keep = [plan.chunks]
        with torch.cuda.stream(self.side):
            for i, (a, b) in enumerate(self.ranges):
                base = self.staging
                for c, s in zip(plan.chunks, plan.stages, strict=True):  # the old fetch
                    lo, hi = a * c.layer_bytes, b * c.layer_bytes
                    base[s + lo : s + hi].copy_(c.data[lo:hi], non_blocking=True)
                for f, t in up.items():
                    f.launch(base, t[a:b].reshape(-1, t.shape[-1]), buf, freq, plan.most[f])
                self.flags[i : i + 1].fill_(1)


def chunks_for(
    model, ctx: int, prefix_tokens: int = 64, passage: int = 512
) -> tuple[PackedChunk, list[KVChunk]]:
    cfg = model.config
    shape = (cfg.num_key_value_heads, head_dim(cfg))
    layers, dev, dt = cfg.num_hidden_layers, model.device, model.dtype
    g = torch.Generator(device=dev).manual_seed(ctx)

    def rnd(n: int) -> torch.Tensor:
        return torch.randn(shape[0], n, shape[1], generator=g, device=dev, dtype=dt)

    pk = [rnd(prefix_tokens) for _ in range(layers)]
    prefix = PackedChunk.from_layers(pk, [rnd(prefix_tokens) for _ in range(layers)], prefix_tokens, 0)
    press, quant = KnormPress(ratio=0.6), QuantizePress(bits=4, group_size=64)
    out, start = [], prefix_tokens
    for n in passage_sizes(ctx - prefix_tokens, passage):
        ids = torch.randint(100, cfg.vocab_size, (n,))
        pos = torch.arange(start, start + n, device=dev).expand(shape[0], n).contiguous()
        kept = []
        for li in range(layers):
            layer = press(DenseLayer(rnd(n), rnd(n), pos), layer_idx=li, attn=None)
            kept.append(quant(layer, layer_idx=li, attn=None))
        key = ChunkKey(model="ab", layout="ab", presses="knorm+quantize", tokens=tokens_digest(ids.tolist()))
        out.append(KVChunk(kept, ids, prefix_tokens, n, key, "ab"))
        start += n
    return prefix, out


def engine(
    model, base: FastGenerator, streamer: type[HostStream] = HostStream, group: int = 8
) -> FastGenerator:  # type: ignore[no-untyped-def]
    """A streaming engine sharing ``base``'s step and attention (and so its stacked weights)."""
    return FastGenerator(
        model,
        capacity=base.capacity,
        max_question=32,
        max_new_tokens=1,
        buckets=(32,),
        attention=base.attention,
        step=base.step,
        stream_group=group,
        streamer=streamer,
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="10240,32768")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--shape", default="llama3-8b")  # tiny-llama + --device cpu: a smoke run
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    torch.manual_seed(0)
    model = build_model(args.shape, args.device, torch.bfloat16)
    clock = Clock(torch.device(args.device), 3, args.repeats)
    base = FastGenerator(model, capacity=max(contexts), max_question=32, max_new_tokens=1, buckets=(32,))
    question = torch.randint(100, model.config.vocab_size, (32,)).tolist()

    rows = []
    for ctx in contexts:
        prefix, chunks = chunks_for(model, ctx)
        gpu = [QuantizedPackedChunk.from_chunk(c) for c in chunks]
        host = [HostChunk.from_chunk(c.to("cpu"), model.dtype) for c in chunks]
        row: dict = {"context": ctx, "host_mb": round(sum(h.nbytes for h in host) / 1e6, 1)}
        tokens = {}
        plan = [
            ("gpu", None, 8, gpu),
            ("old_g8", OneStream, 8, host),
            ("new_g8", HostStream, 8, host),
            ("old_g8_b", OneStream, 8, host),
            ("new_g8_b", HostStream, 8, host),
            ("old_g4", OneStream, 4, host),
            ("new_g4", HostStream, 4, host),
            ("old_g16", OneStream, 16, host),
            ("new_g16", HostStream, 16, host),
            ("serial", HostStream, 64, host),
        ]
        for name, streamer, group, items in plan:
            eng = base if streamer is None else engine(model, base, streamer, group)

            def go(eng=eng, items=items, prefix=prefix) -> int:
                eng.load(prefix, items)
                return int(eng.prefill([question])[0])

            row[name] = round(clock(go), 3)
            tokens[name] = go()
            del eng
            torch.cuda.empty_cache()
        row["same_first_token"] = len(set(tokens.values())) == 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = [
        "context",
        "host_mb",
        "gpu",
        "old_g8",
        "new_g8",
        "old_g8_b",
        "new_g8_b",
        "old_g4",
        "new_g4",
        "old_g16",
        "new_g16",
        "serial",
        "same_first_token",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
