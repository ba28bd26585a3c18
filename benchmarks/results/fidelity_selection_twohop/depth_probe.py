"""Scratch: recompute more tokens but only in the lower `depth` share of layers (stale K/V above)."""
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
sys.argv_saved = list(sys.argv)
import ragcompress.kv.assembly.selective as sel_mod
import ragcompress.kv.assembly.recompute as rec
from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.blend_question import question_attention
from ragcompress.kv.assembly.selective import SelectiveRecompute

DEPTH = {"v": 1.0}
_orig = rec.recompute_slots


def recompute_depth(model, cache, slots, chosen):
    n = len(cache.layers)
    top = int(round(DEPTH["v"] * n))
    saved = [(l.keys[:, :, chosen].clone(), l.values[:, :, chosen].clone()) for l in cache.layers[top:]]
    _orig(model, cache, slots, chosen)
    for l, (k, v) in zip(cache.layers[top:], saved):
        l.keys[:, :, chosen] = k
        l.values[:, :, chosen] = v


@register_assembly("depthq")
@dataclass
class DepthQ(SelectiveRecompute):
    depth: float = 0.5

    def score(self, model, cache, slots, question, position):
        DEPTH["v"] = self.depth
        return question_attention(model, cache, question, position, slots.positions, 8)


import ragcompress.kv.assembly.recompute as r2
sel_src = sel_mod.SelectiveRecompute.prepare
# patch the name used inside prepare (imported lazily from the module)
r2.recompute_slots = lambda m, c, s, ch: (recompute_depth(m, c, s, ch) if DEPTH["v"] < 1 else _orig(m, c, s, ch))

sys.path.insert(0, __import__("os").path.dirname(__file__))
import selection_probe  # noqa: E402

sys.exit(selection_probe.main())
