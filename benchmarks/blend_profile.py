"""Where ``blend``'s time goes on a GPU: its stages timed one by one, then a torch.profiler table.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/blend_profile.py --contexts 10240 --out DIR

On the Llama-3-8B shape with random bf16 weights (``ragcompress bench ttft``'s model), from dense
chunks (512-token passages after a 64-token prefix, each the slice of one joint prefill), for each
context and recompute share: the median milliseconds (CUDA events, after a warm-up) of the eager
concat assembly, the slot map, the token scoring pass (``Blend.score``: the check-layer
deviation), the partial forward (``recompute.recompute_slots``) and of the whole
:meth:`Blend.prepare`; then one profiled
``prepare`` at the last context and share, its top kernels by GPU time and top ops by CPU time.
Writes ``blend_profile.json`` and ``blend_profile.txt`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ragcompress_bench.ttft import build_model
from ragcompress_bench.ttft_modes import _chunks
from ragcompress_bench.ttft_timing import Clock, passage_sizes

from ragcompress.kv.assemble import assemble, concat_starts
from ragcompress.kv.assembly import blend as blend_mod
from ragcompress.kv.assembly import recompute as recompute_mod
from ragcompress.kv.assembly.blend import Blend
from ragcompress.models.arch import arch_for
from ragcompress.models.compat import cache_kwargs


def stages(model: Any, prefix: Any, chunks: list[Any], question: list[int], share: float, reps: int) -> dict:
    def clock(fn: Callable[[], Any], repeats: int) -> float:
        return Clock(model.device, 2, repeats)(fn)

    arch = arch_for(model)
    mode = Blend(recompute=share)
    row: dict[str, Any] = {"recompute": share}
    row["assemble_ms"] = clock(lambda: assemble(prefix, chunks, arch, model.config), reps)
    starts = concat_starts(prefix.length, chunks)
    row["slot_map_ms"] = clock(
        lambda: recompute_mod.slot_map(prefix.length, chunks, starts, model.device), reps
    )
    cache, position = assemble(prefix, chunks, arch, model.config)
    slots = recompute_mod.slot_map(prefix.length, chunks, starts, model.device)
    row["score_ms"] = clock(lambda: mode.score(model, cache, slots, question, position), reps)
    k = round(share * slots.chunk_slots)
    chosen = slots.candidates[torch.randperm(slots.candidates.numel(), device=model.device)[:k]].sort().values
    row["partial_forward_ms"] = clock(
        lambda: recompute_mod.recompute_slots(model, cache, slots, chosen), reps
    )
    row["prepare_ms"] = clock(lambda: mode.prepare(model, prefix, chunks, question), reps)
    row["recomputed_tokens"] = k
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="10240")
    p.add_argument("--shares", default="0.05,0.15")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="/tmp/blend_profile")
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(args.shape, args.device, torch.bfloat16 if args.device == "cuda" else torch.float32)
    print("blend module:", blend_mod.__file__, flush=True)
    rows = []
    g = torch.Generator().manual_seed(0)
    for ctx in [int(x) for x in args.contexts.split(",")]:
        ids = torch.randint(100, model.config.vocab_size, (ctx,), generator=g)
        question = torch.randint(100, model.config.vocab_size, (32,), generator=g).tolist()
        from transformers import DynamicCache

        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            model(
                input_ids=ids[None].to(model.device),
                **cache_kwargs(model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
            kv = [(layer.keys[0], layer.values[0]) for layer in cache.layers]  # type: ignore[union-attr,index]
        del cache
        prefix, chunks = _chunks(kv, 64, passage_sizes(ctx - 64, 512))
        for share in [float(x) for x in args.shares.split(",")]:
            row = {"context": ctx, **stages(model, prefix, chunks, question, share, args.repeats)}
            row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    (out / "blend_profile.json").write_text(json.dumps(rows, indent=1))
    if not args.profile:
        return
    from torch.profiler import ProfilerActivity, profile

    mode = Blend(recompute=float(args.shares.split(",")[-1]))
    mode.prepare(model, prefix, chunks, question)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        mode.prepare(model, prefix, chunks, question)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    avg = prof.key_averages()
    text = avg.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    text += "\n" + avg.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=70)
    (out / "blend_profile.txt").write_text(text)
    print(text[:9000])


if __name__ == "__main__":
    main()
