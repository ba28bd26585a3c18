"""Scratch: recompute whole sentences, ranked by the question probe (blend_question's scores)."""
import argparse, json, sys, time
from dataclasses import dataclass
import torch
from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.blend_question import QuestionBlend

TOK = {"t": None, "ends": {}}


def sentence_ids(tokens: torch.Tensor) -> torch.Tensor:
    """(slots,) sentence index per slot: a new sentence after a token holding . ! ? or newline."""
    tok = TOK["t"]
    out = torch.empty(tokens.numel(), dtype=torch.long)
    sid, prev_end = 0, True
    for i, t in enumerate(tokens.tolist()):
        if t < 0:
            out[i] = -1
            prev_end = True
            continue
        if prev_end:
            sid += 1
        out[i] = sid
        s = TOK["ends"].get(t)
        if s is None:
            s = TOK["ends"][t] = any(c in tok.decode([t]) for c in ".!?\n")
        prev_end = s
    return out


@register_assembly("sentq")
@dataclass
class SentQ(QuestionBlend):
    agg: str = "max"

    def score(self, model, cache, slots, question, position, draft=None):
        s = super().score(model, cache, slots, question, position, draft).float().cpu()
        sid = sentence_ids(slots.tokens.cpu())
        n = int(sid.max()) + 1
        agg = torch.zeros(n)
        if self.agg == "max":
            agg.scatter_reduce_(0, sid.clamp(min=0), s, reduce="amax", include_self=False)
        else:  # mean
            agg.scatter_reduce_(0, sid.clamp(min=0), s, reduce="mean", include_self=False)
        rank = torch.empty(n)
        rank[torch.argsort(agg, descending=True)] = torch.arange(n, 0, -1, dtype=torch.float)
        out = rank[sid.clamp(min=0)] + s / (s.max() + 1e-9) * 0.5
        out[sid < 0] = -1
        return out.to(slots.tokens.device)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--dataset", default="twohop")
    p.add_argument("--modes", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from ragcompress_bench.data import load
    from ragcompress_bench.fidelity_paths import FullPath
    from ragcompress.generate import Generator
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.store.spec import StoreSpec

    specs = json.loads(a.modes)
    gen = Generator(model="qwen2.5-coder-1.5b-instruct", dtype="bfloat16", max_new_tokens=20)
    TOK["t"] = gen.tokenizer
    store = StoreSpec(gpu_bytes=1 << 30).build(gen.lm.device)
    answerers = [KVAnswerer.from_generator(gen, store=store, assembly=s) for s in specs]
    names = [json.dumps(s, sort_keys=True) for s in specs]
    full = FullPath(gen)
    rows = []
    for ex in load(a.dataset, k=5, seed=0, limit=a.limit)[a.start:]:
        passages = [q.text for q in ex.passages]
        ids = [q.id for q in ex.passages]
        hops = ex.metadata.get("hops")
        order = None if not hops else ("fb" if ids.index(hops[0]) < ids.index(hops[1]) else "bf")
        gold = list(gen.tokenizer(ex.answers[0], add_special_tokens=False)["input_ids"])
        idx = torch.tensor(gold)[:, None]
        (ref,) = full.logprobs_many(ex.question, passages, [gold])
        ref = ref.float()
        row = {"id": ex.id, "order": order, "full_ll": float(ref.gather(1, idx).mean()), "modes": {}}
        for name, ans in zip(names, answerers):
            t0 = time.time()
            lp = ans.teacher_forced_logprobs(ex.question, passages, gold).float()
            kl = float((ref.exp() * (ref - lp)).sum(-1).mean())
            row["modes"][name] = {"dll": float(lp.gather(1, idx).mean()) - row["full_ll"], "kl": kl, "s": time.time() - t0}
        rows.append(row)
        print(ex.id, order, " ".join(f"{v['dll']:+.3f}/{v['kl']:.3f}" for v in row["modes"].values()), flush=True)
        with open(a.out, "w") as f:
            json.dump({"specs": specs, "rows": rows}, f, indent=1)
    for grp in (None, "fb", "bf"):
        rs = [r for r in rows if grp is None or r["order"] == grp]
        if not rs:
            continue
        print("group", grp or "all", len(rs))
        for name in names:
            d = sum(r["modes"][name]["dll"] for r in rs) / len(rs)
            k = sum(r["modes"][name]["kl"] for r in rs) / len(rs)
            print(f"  {name}: dll {d:+.3f} kl {k:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
