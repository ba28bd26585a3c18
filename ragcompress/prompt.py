"""The prompt layout shared by the text path and the KV path.

A prompt is a concatenation of token-id segments::

    prefix            BOS + the chat template up to the user's content + the instruction
    passage_1 .. k    one segment per passage ("Document: ...\\n\\n"), tokenized on its own
    question          "Question: ..." + the chat template's end of user turn + assistant header

Each segment is tokenized separately and the ids are concatenated. Both paths use exactly
these ids, so a KV chunk encoded for one passage holds the same tokens that a full prefill
of the same prompt would see, whatever precedes it: that is what makes chunk reuse exact
up to cross-passage attention.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["PromptLayout"]

_SENTINEL = "\x00RAGCOMPRESS_USER_CONTENT\x00"


@dataclass(frozen=True)
class PromptLayout:
    """Token layout of a RAG prompt for one tokenizer.

    ``system`` is the system message; ``instruction`` opens the user turn before the
    documents. ``document_template`` and ``question_template`` are ``str.format`` patterns.
    Document templates must not depend on the passage's rank, or chunks would stop being
    reusable across queries.
    """

    tokenizer: PreTrainedTokenizerBase = field(repr=False, compare=False)
    system: str = "You answer questions using only the documents given. Answer briefly."
    instruction: str = "Read the documents and answer the question.\n\n"
    document_template: str = "Document: {text}\n\n"
    question_template: str = "Question: {query}"

    def __post_init__(self) -> None:
        if "{text}" not in self.document_template:
            raise ValueError("document_template must contain '{text}'")
        if "{query}" not in self.question_template:
            raise ValueError("question_template must contain '{query}'")
        head, tail = self._split_template()
        object.__setattr__(self, "_head", head)
        object.__setattr__(self, "_tail", tail)

    def _split_template(self) -> tuple[str, str]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            try:
                rendered = tok.apply_chat_template(
                    [
                        {"role": "system", "content": self.system},
                        {"role": "user", "content": _SENTINEL},
                    ],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            except Exception:  # templates that reject a system turn fold it into the user turn
                rendered = tok.apply_chat_template(
                    [{"role": "user", "content": self.system + "\n\n" + _SENTINEL}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            assert isinstance(rendered, str)
            head, sep, tail = rendered.partition(_SENTINEL)
            if sep:
                return head, tail
        # Base models without a chat template: a plain completion prompt.
        return self.system + "\n\n", "\nAnswer:"

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_ids(self) -> list[int]:
        """BOS (when the tokenizer uses one and the template lacks it) + template head + instruction."""
        head: str = self._head  # type: ignore[attr-defined]
        ids = self._encode(head + self.instruction)
        bos = self.tokenizer.bos_token_id
        adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]
        if adds_bos and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def passage_ids(self, text: str) -> list[int]:
        """Token ids of one passage segment; independent of the passage's rank."""
        return self._encode(self.document_template.format(text=text))

    def question_ids(self, query: str) -> list[int]:
        """Question segment + end of user turn + assistant header (generation starts after it)."""
        tail: str = self._tail  # type: ignore[attr-defined]
        return self._encode(self.question_template.format(query=query) + tail)

    def prompt_ids(self, passages: list[str], query: str) -> list[int]:
        """The whole prompt, exactly as the text path prefills it."""
        ids = self.prefix_ids()
        for text in passages:
            ids.extend(self.passage_ids(text))
        ids.extend(self.question_ids(query))
        return ids

    def fingerprint(self) -> str:
        """Hash of everything that changes passage or prefix tokens (part of KV cache keys)."""
        payload: dict[str, Any] = {
            "prefix": self.prefix_ids(),
            "document_template": self.document_template,
            "tokenizer": type(self.tokenizer).__name__,
            "vocab": len(self.tokenizer),
            "probe": self._encode("The quick brown fox, 1234 ünïcode."),
        }
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
