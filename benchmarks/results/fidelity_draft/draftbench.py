"""Scratch: blend_question with draft_tokens=4 as its own contender label (blend_draft)."""
import sys
from dataclasses import dataclass

import ragcompress_bench.fidelity_paths as fp
from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.blend_question import QuestionBlend


@register_assembly("blend_draft")
@dataclass
class DraftBlend(QuestionBlend):
    draft_tokens: int = 4


fp._MODES = (*fp._MODES, "blend_draft")
fp._SELECTIVE = (*fp._SELECTIVE, "blend_draft")
from ragcompress.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
