"""A LlamaIndex query engine with ragcompress: retrieve, compress, answer — offline.

A VectorStoreIndex over the bundled SQuAD corpus (embedded with the packaged MiniLM) answers
through ``index.as_query_engine`` with ``RagCompressNodePostprocessor`` as its node
postprocessor and the packaged reader (SmolLM2-135M through ``ragcompress.generate.Generator``)
wrapped as a LlamaIndex ``CustomLLM``.

    python3 demos/llamaindex_qa.py
    python3 demos/llamaindex_qa.py --question "How long is the Rhine?" --compressor '{"name": "tokens"}'
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms import CompletionResponse, CompletionResponseGen, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.schema import TextNode
from llama_index.postprocessor.ragcompress import STATS_KEY, RagCompressNodePostprocessor

from ragcompress.corpus import load_passages
from ragcompress.generate import Generator

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _common, also when loaded by path
from _common import Shown, embed, parse_args, report


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embedding over ragcompress's packaged all-MiniLM-L6-v2 (offline)."""

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return embed(texts)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


class GeneratorLLM(CustomLLM):
    """The packaged reader as a LlamaIndex completion LLM.

    LlamaIndex hands over one formatted prompt (its QA template around the kept nodes); it
    becomes the user turn of the reader's chat template and is decoded greedily.
    """

    _generator: Generator = PrivateAttr()

    def __init__(self, generator: Generator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._generator = generator

    @property
    def metadata(self) -> LLMMetadata:
        gen = self._generator
        return LLMMetadata(
            context_window=int(getattr(gen.lm.config, "max_position_embeddings", 2048)),
            num_output=gen.max_new_tokens,
            model_name=gen.model or "smollm2-135m-instruct",
        )

    def _prompt_ids(self, prompt: str) -> list[int]:
        tok = self._generator.tokenizer
        messages = [
            {"role": "system", "content": self._generator.system},
            {"role": "user", "content": prompt},
        ]
        text = str(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return list(tok(text, add_special_tokens=False)["input_ids"])

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        answer = self._generator.decode(self._prompt_ids(prompt), cache=None)
        return CompletionResponse(text=answer.text, raw={"stats": answer.stats.as_dict()})

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        gen = self._generator
        ids: list[int] = []
        shown = ""
        for token in gen.iter_tokens(self._prompt_ids(prompt), cache=None):
            ids.append(token)
            text = str(gen.tokenizer.decode(ids, skip_special_tokens=True))
            # Byte-level BPE: wait until a multi-byte character is complete.
            if not text.endswith("\ufffd") and len(text) > len(shown):
                yield CompletionResponse(text=text, delta=text[len(shown) :])
                shown = text


def build_engine(postprocessor: RagCompressNodePostprocessor, generator: Generator, k: int) -> Any:
    nodes = [TextNode(id_=p.id, text=p.text, metadata=dict(p.metadata)) for p in load_passages()]
    index = VectorStoreIndex(nodes, embed_model=MiniLMEmbedding())
    return index.as_query_engine(
        llm=GeneratorLLM(generator), node_postprocessors=[postprocessor], similarity_top_k=k
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv, "nodes")
    postprocessor = RagCompressNodePostprocessor(compressor=args.spec)
    generator = Generator(model=args.model, max_new_tokens=args.max_new_tokens)
    response = build_engine(postprocessor, generator, args.k).query(args.question)

    kept = [
        Shown(n.node.node_id, n.node.metadata[STATS_KEY], n.node.get_content(), n.score)
        for n in response.source_nodes
    ]
    report(args.question, str(response).strip(), postprocessor.compressor.spec(), kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
