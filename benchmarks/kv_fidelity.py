"""Fidelity of the KV-chunk path against full prefill on real QA data.

Each example: a SQuAD passage with its (Disfl-QA) question and gold answer, plus k-1
distractor passages, shuffled. Both paths read the same prompt tokens; the only difference
is that chunks never attend to each other. Reported: greedy-answer agreement (identical
tokens), first-token agreement, gold answer found in each answer, and the gold answer's mean
per-token log-likelihood under each path.

    python benchmarks/kv_fidelity.py --limit 40 --k 4
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_common import load_qa, machine, write_result

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.context import chunk_context
from ragcompress.models.compat import cache_kwargs
from ragcompress.models.load import load_reader


def gold_loglik_full(gen: Generator, passages: list[str], question: str, answer: str) -> float:
    """Mean log p(answer tokens | full prompt)."""
    prompt = gen.layout.prompt_ids(passages, question)
    ans = gen.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = gen.lm(input_ids=torch.tensor([prompt + ans], device=gen.lm.device)).logits[0]
    logp = logits[len(prompt) - 1 : -1].float().log_softmax(-1)
    return float(logp[torch.arange(len(ans)), torch.tensor(ans)].mean())


def gold_loglik_chunks(gen: Generator, chunks: list, question: str, answer: str) -> float:
    """Mean log p(answer tokens | assembled chunks + question)."""
    cache, pos = chunk_context(gen.lm, gen.layout, chunks)
    ids = gen.layout.question_ids(question)
    ans = gen.tokenizer(answer, add_special_tokens=False)["input_ids"]
    seq = ids + ans
    phys = cache.get_seq_length()
    dev = gen.lm.device
    with torch.inference_mode():
        logits = gen.lm(
            input_ids=torch.tensor([seq], device=dev),
            **cache_kwargs(gen.lm, cache),
            position_ids=torch.arange(pos, pos + len(seq), device=dev)[None],
            cache_position=torch.arange(phys, phys + len(seq), device=dev),
        ).logits[0]
    logp = logits[len(ids) - 1 : -1].float().log_softmax(-1)
    return float(logp[torch.arange(len(ans)), torch.tensor(ans)].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=40, help="questions evaluated")
    ap.add_argument("--k", type=int, default=4, help="passages per question (gold + k-1 distractors)")
    ap.add_argument("--model", default=None, help="reader (default: packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kv_fidelity.json")
    args = ap.parse_args()

    model, tok = load_reader(args.model, args.device, args.dtype)
    gen = Generator.from_model(model, tok, max_new_tokens=args.max_new_tokens)
    kv = KVAnswerer.from_generator(gen)
    rows = load_qa()
    rng = random.Random(args.seed)
    picked = rng.sample(range(len(rows)), min(args.limit, len(rows)))
    pool = sorted({r["passage"] for r in rows})

    per: list[dict] = []
    t0 = time.perf_counter()
    for n, i in enumerate(picked):
        row = rows[i]
        distractors = rng.sample([p for p in pool if p != row["passage"]], args.k - 1)
        passages = [row["passage"], *distractors]
        rng.shuffle(passages)
        full = gen.generate(row["question"], passages)
        cached = kv.answer(row["question"], passages)
        chunks, _ = kv.cache.get_or_encode(passages)
        gold = row["answer"].strip().lower()
        per.append(
            {
                "same_tokens": full.token_ids == cached.token_ids,
                "same_first_token": full.token_ids[:1] == cached.token_ids[:1],
                "gold_in_full": gold in full.text.lower(),
                "gold_in_kv": gold in cached.text.lower(),
                "ll_full": gold_loglik_full(gen, passages, row["question"], row["answer"]),
                "ll_kv": gold_loglik_chunks(gen, chunks, row["question"], row["answer"]),
                "full": full.text,
                "kv": cached.text,
                "gold": row["answer"],
            }
        )
        print(f"[{n + 1}/{len(picked)}] same={per[-1]['same_tokens']} full={full.text!r} kv={cached.text!r}")

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in per)

    summary = {
        "questions": len(per),
        "k": args.k,
        "greedy_answer_agreement": mean("same_tokens"),
        "first_token_agreement": mean("same_first_token"),
        "gold_in_answer_full": mean("gold_in_full"),
        "gold_in_answer_kv": mean("gold_in_kv"),
        "gold_loglik_full": mean("ll_full"),
        "gold_loglik_kv": mean("ll_kv"),
        "gold_loglik_gap": statistics.fmean(r["ll_kv"] - r["ll_full"] for r in per),
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"\nKV chunks vs full prefill — {len(per)} Disfl-QA questions, k={args.k}, "
        f"{model.config.name_or_path}\n"
    )
    print("| metric | full prefill | KV chunks |")
    print("|---|---|---|")
    print(f"| greedy answer identical | – | {summary['greedy_answer_agreement']:.1%} |")
    print(f"| first token identical | – | {summary['first_token_agreement']:.1%} |")
    print(
        f"| gold answer in output | {summary['gold_in_answer_full']:.1%} | "
        f"{summary['gold_in_answer_kv']:.1%} |"
    )
    print(
        f"| gold answer mean log-lik / token | {summary['gold_loglik_full']:.3f} | "
        f"{summary['gold_loglik_kv']:.3f} (gap {summary['gold_loglik_gap']:+.3f}) |"
    )
    write_result(
        args.out,
        {
            "command": "python " + shlex.join(sys.argv),
            "machine": machine(args.device),
            "model": str(model.config.name_or_path),
            "summary": summary,
            "examples": per,
        },
    )


if __name__ == "__main__":
    main()
