"""A LlamaIndex ``text_qa_template`` as the KV path's prompt layout, and response modes.

The KV path lays a prompt out as ``prefix | chunk_1 .. chunk_k | question``
(``ragcompress.prompt.PromptLayout``): the prefix (system turn and the user turn's opening) is
prefilled once, each node is its own cached chunk, only the question is prefilled per
request. A QA template maps onto that layout when its ``{context_str}`` and ``{query_str}`` sit
in one user message, context first: system messages become the system turn, the user text
before ``{context_str}`` the instruction, each node is one ``"{text}\\n\\n"`` segment (as
LlamaIndex joins node texts with a blank line) and the text from after ``{context_str}`` on,
with the question in place of ``{query_str}``, the question segment. Any other shape (context
in the system message, question before context, assistant turns, other unfilled variables) is
refused with a ``ValueError`` saying why: it could not be honoured with reusable chunks.

Chunks are keyed by the layout's fingerprint, so a template gets chunks of its own and can
never be served a chunk encoded under another layout.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_index.core.base.llms.types import MessageRole
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.response_synthesizers.type import ResponseMode

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.cache import ChunkCache
from ragcompress.prompt import PromptLayout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["SUPPORTED_MODES", "answerer_for", "check_mode", "layout_for"]

_CONTEXT = "\x00RAGCOMPRESS_CONTEXT\x00"
_QUERY = "\x00RAGCOMPRESS_QUERY\x00"
_UNFILLED = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")

# One answer over all the nodes' chunks is what compact and simple_summarize ask for (compact
# packs every node into one prompt whenever they fit, which is the KV path's one context);
# generation answers without the nodes, no_text and context_only call no model at all.
SUPPORTED_MODES = (
    ResponseMode.COMPACT,
    ResponseMode.SIMPLE_SUMMARIZE,
    ResponseMode.GENERATION,
    ResponseMode.NO_TEXT,
    ResponseMode.CONTEXT_ONLY,
)


def check_mode(mode: ResponseMode | str) -> ResponseMode:
    """``mode`` as a ``ResponseMode``; ``ValueError`` for modes the KV path does not run."""
    try:
        mode = ResponseMode(mode)
    except ValueError:
        raise ValueError(
            f"response_mode {mode!r} is not a LlamaIndex ResponseMode; "
            f"RagCompressKVSynthesizer runs {', '.join(m.value for m in SUPPORTED_MODES)}"
        ) from None
    if mode not in SUPPORTED_MODES:
        raise ValueError(
            f"response_mode {mode.value!r} calls the LLM once per node or per group of nodes, each "
            "with a prompt of its own; RagCompressKVSynthesizer answers once over all the nodes' "
            "cached chunks and runs "
            f"{', '.join(m.value for m in SUPPORTED_MODES)}. Use LlamaIndex's own synthesizer with "
            "llama_index.llms.ragcompress.RagCompressLLM for that mode."
        )
    return mode


def layout_for(template: BasePromptTemplate, tokenizer: PreTrainedTokenizerBase, system: str) -> PromptLayout:
    """The KV path's layout for a QA ``template`` (``system``: the system turn when the template
    has no system message). ``ValueError`` naming the problem when the template cannot map."""
    if not isinstance(template, BasePromptTemplate):
        raise TypeError(
            f"text_qa_template must be a LlamaIndex prompt template, got {type(template).__name__}"
        )
    messages = template.format_messages(context_str=_CONTEXT, query_str=_QUERY)
    # LlamaIndex's formatter leaves a variable it was not given as "{name}" in the prompt.
    unfilled = sorted({v for m in messages for v in _UNFILLED.findall(m.content or "")})
    if unfilled:
        raise ValueError(
            f"text_qa_template needs {', '.join(unfilled)} besides context_str and query_str: "
            "fill them first with template.partial_format(...)"
        )
    systems = [m.content or "" for m in messages if m.role in (MessageRole.SYSTEM, MessageRole.DEVELOPER)]
    users = [m for m in messages if m.role not in (MessageRole.SYSTEM, MessageRole.DEVELOPER)]
    if any(_CONTEXT in s or _QUERY in s for s in systems):
        raise ValueError(
            "text_qa_template puts {context_str} or {query_str} in a system message; the KV path "
            "needs both in the user message (the system turn is a prefix shared by every request)"
        )
    if len(users) != 1 or users[0].role != MessageRole.USER:
        raise ValueError(
            "text_qa_template must have exactly one user message (and system messages before it)"
        )
    text = users[0].content or ""
    if text.count(_CONTEXT) != 1 or text.count(_QUERY) != 1 or text.index(_CONTEXT) > text.index(_QUERY):
        raise ValueError(
            "text_qa_template must hold {context_str} once and then {query_str} once: the KV path "
            "prefills the question after the nodes' cached chunks"
        )
    instruction, _, rest = text.partition(_CONTEXT)
    question = _escaped(rest.lstrip("\n")).replace(_QUERY, "{query}")
    return PromptLayout(
        tokenizer,
        system="\n\n".join(systems) if systems else system,
        instruction=instruction,
        document_template="{text}\n\n",
        question_template=question,
    )


def _escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@dataclass
class LayoutGenerator(Generator):
    """A generator answering in a given :class:`PromptLayout` (the model, tokenizer and limits
    of the generator it is made from; nothing is loaded twice)."""

    prompt_layout: PromptLayout | None = None

    @property
    def layout(self) -> PromptLayout:
        return self.prompt_layout if self.prompt_layout is not None else super().layout


def answerer_for(answerer: KVAnswerer, layout: PromptLayout) -> KVAnswerer:
    """``answerer`` answering in ``layout``: same model, store, presses and assembly mode (and a
    subclass's own settings); its chunks are keyed by the new layout's fingerprint."""
    gen = answerer.generator
    generator = LayoutGenerator.from_model(
        gen.lm, gen.tokenizer, dtype=gen.dtype, max_new_tokens=gen.max_new_tokens, system=layout.system,
        prompt_layout=layout,
    )  # fmt: skip
    generator.model = gen.model  # from_model's first argument is the loaded model, not this name
    cache = answerer.cache
    encoder = dataclasses.replace(cache.encoder, layout=layout)
    chunks = ChunkCache(encoder, cache.store, cache.presses, lease_s=cache.lease_s, poll_s=cache.poll_s)
    return dataclasses.replace(answerer, generator=generator, cache=chunks)
