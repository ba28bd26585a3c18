"""Gold-answer log-likelihood vs ``blend``'s recompute share, against a full prefill.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/blend_curve.py --limit 6 --out DIR

For each question (default: the invented two-hop set, k = 5, where the answer needs two passages)
the full prefill's mean log-probability per gold-answer token, then, for every recompute share,
the same from the KV path under ``blend`` at that share (share 0 is ``concat``; 1 is a full
prefill up to rounding) minus the full prefill's. Prints one line per question and the means,
and writes ``blend_curve.json`` and ``blend_curve.txt`` to ``--out``. All shares read one shared
chunk store, so each passage is encoded once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reader", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--dataset", default="twohop")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shares", default="0,0.15,0.5,1", help="comma-separated recompute shares in [0, 1]")
    p.add_argument("--out", default="benchmarks/results/blend_curve")
    args = p.parse_args(argv)

    import torch
    from ragcompress_bench.data import load
    from ragcompress_bench.fidelity_paths import FullPath

    from ragcompress.generate import Generator
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.store.spec import StoreSpec

    shares = [float(x) for x in args.shares.split(",")]
    gen = Generator(model=args.reader, dtype=args.dtype, max_new_tokens=20)
    store = StoreSpec(gpu_bytes=1 << 30).build(gen.lm.device)
    modes = {
        s: KVAnswerer.from_generator(gen, store=store, assembly={"name": "blend", "recompute": s})
        for s in shares
    }
    full = FullPath(gen)
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    for ex in load(args.dataset, k=args.k, seed=args.seed, limit=args.limit):
        passages = [q.text for q in ex.passages]
        gold = list(gen.tokenizer(ex.answers[0], add_special_tokens=False)["input_ids"])
        index = torch.tensor(gold)[:, None]
        (ref,) = full.logprobs_many(ex.question, passages, [gold])
        ll_full = float(ref.gather(1, index).mean())
        deltas = [
            float(modes[s].teacher_forced_logprobs(ex.question, passages, gold).gather(1, index).mean())
            - ll_full
            for s in shares
        ]
        rows.append(
            {
                "example": ex.id,
                "full_ll": ll_full,
                "delta_ll": dict(zip(map(str, shares), deltas, strict=True)),
            }
        )
        lines.append(
            f"{ex.id} full {ll_full:.3f} "
            + " ".join(f"{s:g}:{d:+.3f}" for s, d in zip(shares, deltas, strict=True))
        )
        print(lines[-1], flush=True)
    means = {str(s): sum(r["delta_ll"][str(s)] for r in rows) / len(rows) for s in shares}
    lines.append("mean delta " + " ".join(f"{float(s):g}:{m:+.3f}" for s, m in means.items()))
    print(lines[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python3 benchmarks/blend_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {
        "command": command,
        "reader": args.reader,
        "dtype": args.dtype,
        "rows": rows,
        "mean_delta_ll": means,
    }
    (out / "blend_curve.json").write_text(json.dumps(payload, indent=1))
    (out / "blend_curve.txt").write_text(f"{command}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
