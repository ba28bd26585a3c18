"""Relabel the scratch journal to the library's labels and resolved specs (no re-measurement)."""
import json, sys
from ragcompress.kv.assembly import build_assembly
src, dst = sys.argv[1], sys.argv[2]
M = {
    "full prefill": ("full prefill", None),
    "chunks": ("chunks", {"name": "concat"}),
    "blend:0.15": ("blend:0.15", {"name": "blend", "recompute": 0.15}),
    "blend_question:0.15": ("blend_question:0.15", {"name": "blend_question", "recompute": 0.15, "draft_tokens": 0}),
    "blend_question:0.3": ("blend_question:0.3", {"name": "blend_question", "recompute": 0.3, "draft_tokens": 0}),
    "blend_draft:0.15": ("blend_question:0.15/draft_tokens=4", {"name": "blend_question", "recompute": 0.15, "draft_tokens": 4}),
}
out = []
for line in open(src):
    r = json.loads(line)
    label, spec = M[r["contender"]]
    r["contender"] = label
    r["spec"] = {"assembly": None if spec is None else build_assembly(spec).spec(), "presses": []}
    out.append(json.dumps(r))
open(dst, "w").write("\n".join(out) + "\n")
print(len(out))
