"""Diagnostic: how much can selective recompute at a share repair, with an oracle choice?

oracle score = deviation of each slot's cached K/V from the full prefill's, summed over layers
(relative to the layer's mean norm). Teacher forced along the gold answer: delta LL and KL(full||c).
"""
import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass

import torch

from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.recompute import ScatterLayer, recompute_slots
from ragcompress.kv.assembly.selective import SelectiveRecompute


def full_cache(model, cache, slots):
    trial = copy.copy(cache)
    trial.layers = [ScatterLayer.of(l) for l in cache.layers]
    for l in trial.layers:  # own tensors
        l.keys, l.values = l.keys.clone(), l.values.clone()
    recompute_slots(model, trial, slots, slots.candidates)
    return trial


@register_assembly("oracle")
@dataclass
class Oracle(SelectiveRecompute):
    lo: float = 0.0  # layer range as a share of depth
    hi: float = 1.0
    keys: bool = True

    def score(self, model, cache, slots, question, position):
        full = full_cache(model, cache, slots)
        n = len(cache.layers)
        out = torch.zeros(int(slots.positions.numel()))
        for i in range(int(self.lo * n), max(int(self.hi * n), int(self.lo * n) + 1)):
            a, b = cache.layers[i], full.layers[i]
            pairs = [(a.values, b.values)] + ([(a.keys, b.keys)] if self.keys else [])
            for s, f in pairs:
                d = (f.float() - s.float()).norm(dim=-1).sum(dim=(0, 1))
                out += (d / f.float().norm(dim=-1).sum(dim=(0, 1)).mean()).cpu()
        return out


@register_assembly("oracle_final")
@dataclass
class OracleFinal(SelectiveRecompute):
    """greedy-ish: rank by the effect on the gold? no: rank by question-attention to full cache * deviation."""

    def score(self, model, cache, slots, question, position):
        from ragcompress.kv.assembly.blend_question import question_attention

        full = full_cache(model, cache, slots)
        qa = question_attention(model, full, question, position, slots.positions).cpu()
        n = len(cache.layers)
        dev = torch.zeros(int(slots.positions.numel()))
        for i in range(n):
            s, f = cache.layers[i].values, full.layers[i].values
            d = (f.float() - s.float()).norm(dim=-1).sum(dim=(0, 1))
            dev += (d / f.float().norm(dim=-1).sum(dim=(0, 1)).mean()).cpu()
        return dev * qa


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reader", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--dataset", default="twohop")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--limit", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", required=True, help="json list of assembly specs")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from ragcompress_bench.data import load
    from ragcompress_bench.fidelity_paths import FullPath

    from ragcompress.generate import Generator
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.store.spec import StoreSpec

    specs = json.loads(a.modes)
    gen = Generator(model=a.reader, dtype="bfloat16", max_new_tokens=20)
    store = StoreSpec(gpu_bytes=1 << 30).build(gen.lm.device)
    answerers = [KVAnswerer.from_generator(gen, store=store, assembly=s) for s in specs]
    names = [json.dumps(s, sort_keys=True) for s in specs]
    full = FullPath(gen)
    rows = []
    for ex in load(a.dataset, k=a.k, seed=a.seed, limit=a.limit):
        passages = [q.text for q in ex.passages]
        gold = list(gen.tokenizer(ex.answers[0], add_special_tokens=False)["input_ids"])
        idx = torch.tensor(gold)[:, None]
        (ref,) = full.logprobs_many(ex.question, passages, [gold])
        ref = ref.float()
        row = {"id": ex.id, "full_ll": float(ref.gather(1, idx).mean()), "modes": {}}
        for name, ans in zip(names, answerers):
            t0 = time.time()
            lp = ans.teacher_forced_logprobs(ex.question, passages, gold).float()
            kl = float((ref.exp() * (ref - lp)).sum(-1).mean())
            row["modes"][name] = {"dll": float(lp.gather(1, idx).mean()) - row["full_ll"], "kl": kl, "s": time.time() - t0}
        rows.append(row)
        print(ex.id, " ".join(f"{v['dll']:+.3f}/{v['kl']:.3f}" for v in row["modes"].values()), flush=True)
        with open(a.out, "w") as f:
            json.dump({"specs": specs, "rows": rows}, f, indent=1)
    print("mean")
    for name in names:
        d = sum(r["modes"][name]["dll"] for r in rows) / len(rows)
        k = sum(r["modes"][name]["kl"] for r in rows) / len(rows)
        print(f"{name}: dll {d:+.3f} kl {k:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


SEL: dict = {"slots": None}


@register_assembly("fixed")
@dataclass
class Fixed(SelectiveRecompute):
    def score(self, model, cache, slots, question, position):
        out = torch.zeros(int(slots.positions.numel()))
        out[SEL["slots"]] = 1.0
        return out


from ragcompress.kv.assembly.blend_attention import Probe  # noqa: E402


@dataclass(eq=False)
class LastProbe(Probe):
    last: int = 1
    reduce: str = "max"

    def attend(self, query, key, value, scaling, layer):
        _, heads, n, d = query.shape
        kv_heads = key.shape[1]
        group = heads // kv_heads
        q = query[0].reshape(kv_heads, group * n, d).float() * scaling
        logits = torch.matmul(q, key[0].float().transpose(1, 2))
        tokens = torch.arange(n)
        later = tokens[None, :] > tokens.repeat(group)[:, None]
        logits[:, :, self.slots:] = logits[:, :, self.slots:].masked_fill(later, float("-inf"))
        probs = logits.softmax(dim=-1)
        rows = (tokens >= n - self.last).repeat(group)
        sel = probs[:, rows, : self.slots]
        self.total += sel.amax(dim=(0, 1)) if self.reduce == "max" else sel.mean(dim=(0, 1))
        out = torch.matmul(probs.to(value.dtype), value[0])
        return out.reshape(1, heads, n, d).transpose(1, 2)


def last_attention(model, cache, question, position, last, reduce):
    from ragcompress.kv.assembly.blend_attention import blend_attention
    from ragcompress.models.compat import cache_kwargs

    n, slots = len(question), cache.get_seq_length()
    kept = [(l.keys, l.values) for l in cache.layers]
    probe = LastProbe(model.config, slots, torch.zeros(slots), (), None, last=last, reduce=reduce)
    cols = torch.arange(slots + n)[None, :]
    mask = torch.where(cols <= torch.arange(slots, slots + n)[:, None], 0.0, torch.finfo(model.dtype).min)
    with torch.inference_mode(), blend_attention(model, probe) as runner:
        runner(input_ids=torch.tensor([list(question)]), position_ids=torch.arange(position, position + n)[None],
               attention_mask=mask.to(model.dtype)[None, None], cache_position=torch.arange(slots, slots + n),
               use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    for l, (k, v) in zip(cache.layers, kept):
        l.keys, l.values = k, v
    return probe.total


def dilate(score, cand, k, before, after):
    order = torch.argsort(score[cand], descending=True, stable=True)
    cset = set(cand.tolist())
    chosen: list = []
    seen = set()
    for o in order.tolist():
        i = int(cand[o])
        for j in range(i - before, i + after + 1):
            if j in cset and j not in seen:
                seen.add(j)
                chosen.append(j)
        if len(chosen) >= k:
            break
    out = torch.zeros_like(score)
    for r, j in enumerate(chosen[:k]):
        out[j] = float(k - r + 1)
    return out


@register_assembly("lastq")
@dataclass
class LastQ(SelectiveRecompute):
    last: int = 1
    reduce: str = "max"
    before: int = 0
    after: int = 0

    def score(self, model, cache, slots, question, position):
        s = last_attention(model, cache, question, position, self.last, self.reduce)
        if self.before or self.after:
            k = min(round(self.recompute * slots.chunk_slots), int(slots.candidates.numel()))
            s = dilate(s, slots.candidates, k, self.before, self.after)
        return s


from ragcompress.kv.assembly.base import Context  # noqa: E402


@register_assembly("lastq2")
@dataclass
class LastQ2(SelectiveRecompute):
    last: int = 8
    stages: int = 2
    dev_weight: float = 0.0

    def prepare(self, model, prefix, chunks, question):
        from ragcompress.kv.assemble import assemble, concat_starts
        from ragcompress.kv.assembly.recompute import slot_map
        from ragcompress.models.arch import arch_for

        arch = arch_for(model)
        cache, position = assemble(prefix, chunks, arch, model.config)
        n_slots = cache.get_seq_length()
        slots = slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), model.device)
        k = min(round(self.recompute * slots.chunk_slots), int(slots.candidates.numel()))
        done = torch.zeros(n_slots, dtype=torch.bool)
        for s in range(self.stages):
            ks = round(k * (s + 1) / self.stages) - int(done.sum())
            if ks <= 0:
                continue
            sc = last_attention(model, cache, question, position, self.last, "max")
            if self.dev_weight:
                from ragcompress.kv.assembly.deviation import value_deviation
                dv = value_deviation(model, cache, slots, 1)
                sc = sc * (dv / dv[slots.candidates].mean()) ** self.dev_weight
            sc[done] = -1.0
            cand = slots.candidates
            order = torch.sort(sc[cand], descending=True, stable=True).indices[:ks]
            chosen = torch.sort(cand[order]).values
            recompute_slots(model, cache, slots, chosen)
            done[chosen] = True
        return Context(cache, position, slots=n_slots, recompute=k / slots.chunk_slots)


LastQ2.score = lambda self, *a: None  # prepare does the scoring
LastQ2.__abstractmethods__ = frozenset()
