"""Scratch: voters = question's last 8 tokens + a greedy draft of the answer's first d tokens
decoded over the stale concat cache."""
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.blend_question import question_attention
from ragcompress.kv.assembly.selective import SelectiveRecompute
from ragcompress.models.compat import cache_kwargs


def draft(model, cache, question, position, d):
    slots = cache.get_seq_length()
    kept = [(l.keys, l.values) for l in cache.layers]
    seq = list(question)
    out = []
    with torch.inference_mode():
        n = len(seq)
        o = model(input_ids=torch.tensor([seq]), position_ids=torch.arange(position, position + n)[None],
                  cache_position=torch.arange(slots, slots + n), use_cache=True, logits_to_keep=1,
                  **cache_kwargs(model, cache))
        for i in range(d):
            t = int(o.logits[0, -1].argmax())
            out.append(t)
            p = position + n + i
            o = model(input_ids=torch.tensor([[t]]), position_ids=torch.tensor([[p]]),
                      cache_position=torch.tensor([slots + n + i]), use_cache=True, logits_to_keep=1,
                      **cache_kwargs(model, cache))
    for l, (k, v) in zip(cache.layers, kept):
        l.keys, l.values = k, v
    return out


@register_assembly("draftq")
@dataclass
class DraftQ(SelectiveRecompute):
    d: int = 4
    last: int = 8
    only_draft: bool = False

    def score(self, model, cache, slots, question, position):
        extra = draft(model, cache, question, position, self.d)
        voters = self.d if self.only_draft else self.last + self.d
        return question_attention(model, cache, list(question) + extra, position, slots.positions, voters)


import selection_probe  # noqa: E402

sys.exit(selection_probe.main())
