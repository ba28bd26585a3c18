"""Scratch: recompute the later passages' sentences that share rare token bigrams with the
question's top sentences (the bridge), then the top sentences, then the rest by token score."""
import sys
from dataclasses import dataclass
import torch
sys.path.insert(0, "/work/scratch")
import sent_probe as sp
from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.blend_question import QuestionBlend

STATE = {}


@register_assembly("linkq")
@dataclass
class LinkQ(QuestionBlend):
    top: int = 2
    rest: str = "token"  # or "none"

    def repair(self, model, prefix, chunks, question, draft=None):
        STATE["lens"] = [int(c.token_ids.numel()) for c in chunks]
        STATE["P"] = prefix.length
        STATE["q"] = list(question)
        return super().repair(model, prefix, chunks, question, draft)

    def score(self, model, cache, slots, question, position, draft=None):
        s = super().score(model, cache, slots, question, position, draft).float().cpu()
        tok = slots.tokens.cpu()
        sid = sp.sentence_ids(tok)
        n = int(sid.max()) + 1
        P, lens = STATE["P"], STATE["lens"]
        pid = torch.full((tok.numel(),), -1)
        o = P
        for j, L in enumerate(lens):
            pid[o:o + L] = j
            o += L
        valid = sid >= 0
        mean = torch.zeros(n).scatter_reduce_(0, sid[valid], s[valid], reduce="mean", include_self=False)
        top = torch.argsort(mean, descending=True)[: self.top].tolist()
        qbi = {(a, b) for a, b in zip(STATE["q"], STATE["q"][1:])}
        seq = tok.tolist()
        def bigrams(sentence):
            idx = (sid == sentence).nonzero().flatten().tolist()
            return {(seq[i], seq[i + 1]) for i in idx[:-1]}, idx
        out = s / (s.max() + 1e-9)
        linked = set()
        for t in top:
            bt, idx = bigrams(t)
            bt -= qbi
            p = int(pid[idx[0]])
            for u in range(1, n):
                if u in top:
                    continue
                bu, idxu = bigrams(u)
                if int(pid[idxu[0]]) > p and bt & bu:
                    linked.add(u)
        for u in linked:
            out[sid == u] += 3.0
        for t in top:
            out[sid == t] += 2.0
        out[~valid] = -1
        return out.to(slots.tokens.device)


if __name__ == "__main__":
    sys.exit(sp.main())
