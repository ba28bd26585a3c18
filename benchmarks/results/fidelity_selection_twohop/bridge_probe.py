"""Which tokens matter for two-hop? recompute chosen slot sets (bridge mentions, whole later hop)."""
import json, sys, time
import torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
import selection_probe as oracle  # registers "fixed" (SEL)
from ragcompress_bench.data import load
from ragcompress_bench.fidelity_paths import FullPath
from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.store.spec import StoreSpec

gen = Generator(model="qwen2.5-coder-1.5b-instruct", dtype="bfloat16", max_new_tokens=20)
store = StoreSpec(gpu_bytes=1 << 30).build(gen.lm.device)
ans = KVAnswerer.from_generator(gen, store=store, assembly={"name": "fixed", "recompute": 0.5})
base = KVAnswerer.from_generator(gen, store=store, assembly={"name": "concat"})
full = FullPath(gen)
tok = gen.tokenizer

def find(seq, sub):
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1

def run(name, q, passages, gold, ref, idx, sel, chunk_slots):
    if sel is None:
        lp = base.teacher_forced_logprobs(q, passages, gold).float()
    else:
        oracle.SEL["slots"] = torch.tensor(sorted(set(sel)))
        ans.assembly.recompute = len(set(sel)) / chunk_slots
        lp = ans.teacher_forced_logprobs(q, passages, gold).float()
    kl = float((ref.exp() * (ref - lp)).sum(-1).mean())
    return float(lp.gather(1, idx).mean()), kl

limit = int(sys.argv[1]); tot = {}
for ex in load("twohop", k=5, seed=0, limit=limit):
    passages = [p.text for p in ex.passages]
    ids = [p.id for p in ex.passages]
    hops = [ids.index(h) for h in ex.metadata["hops"]]
    later, earlier = max(hops), min(hops)
    chunks, _ = base.cache.get_or_encode(passages)
    lens = [int(c.token_ids.numel()) for c in chunks]
    # prefix length: chunk base offset
    P = chunks[0].base_offset
    starts = [P + sum(lens[:j]) for j in range(len(lens))]
    cs = sum(lens)
    place = ex.metadata["place"]
    def mention(j):
        seq = chunks[j].token_ids.tolist()
        for form in (" " + place, place):
            sub = tok(form, add_special_tokens=False)["input_ids"]
            i = find(seq, sub)
            if i >= 0:
                return [starts[j] + i + t for t in range(len(sub))], i + len(sub)
        raise RuntimeError(place)
    m_late, end_late = mention(later)
    m_early, _ = mention(earlier)
    whole_late = list(range(starts[later], starts[later] + lens[later]))
    after_late = list(range(m_late[0], starts[later] + lens[later]))
    first_sent_late = list(range(starts[later], starts[later] + end_late + 1))
    gold = list(tok(ex.answers[0], add_special_tokens=False)["input_ids"])
    idx = torch.tensor(gold)[:, None]
    (ref,) = full.logprobs_many(ex.question, passages, [gold]); ref = ref.float()
    fl = float(ref.gather(1, idx).mean())
    sets = {"concat": None, "bridge_late": m_late, "bridge_both": m_late + m_early,
            "first_sent_late": first_sent_late, "after_bridge_late": after_late, "whole_late": whole_late,
            "whole_late+bridge_early": whole_late + m_early}
    line = [f"{ex.id} order={hops} full={fl:.3f}"]
    for name, sel in sets.items():
        ll, kl = run(name, ex.question, passages, gold, ref, idx, sel, cs)
        share = 0 if sel is None else len(set(sel)) / cs
        tot.setdefault(name, []).append((ll - fl, kl, share))
        line.append(f"{name}:{ll - fl:+.3f}/{kl:.3f}/{share:.2f}")
    print(" ".join(line), flush=True)
print("mean")
for n, v in tot.items():
    print(n, f"dll {sum(x[0] for x in v)/len(v):+.3f} kl {sum(x[1] for x in v)/len(v):.3f} share {sum(x[2] for x in v)/len(v):.3f}")
