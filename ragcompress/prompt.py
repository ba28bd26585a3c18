"""The prompt layout shared by the text path and the KV path.

A prompt is a concatenation of token-id segments::

    prefix            BOS + the chat template up to the user's content + the instruction
    passage_1 .. k    one segment per passage ("Document: ...\\n\\n"), tokenized on its own
    question          "Question: ..." + the chat template's end of user turn + assistant header

Each segment is tokenized separately and the ids are concatenated. Both paths use exactly
these ids, so a KV chunk encoded for one passage holds the same tokens that a full prefill
of the same prompt would see, whatever precedes it: that is what makes chunk reuse exact
up to cross-passage attention.

Passage and question text is untrusted: a special token written in it (``<|im_end|>``,
``<|im_start|>``, ``<|endoftext|>``, any token the tokenizer marks special) is tokenized as
plain text (``split_special_tokens=True``), never as the control token, so a document cannot
close the user turn or open a system turn. Text without special-token strings is tokenized
exactly as before (same ids, same chunk keys). A tokenizer that cannot split special tokens
gets a ``ValueError`` naming the argument instead of a prompt with injected control tokens.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.validate import check_query

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["PromptLayout"]

_SENTINEL = "\x00RAGCOMPRESS_USER_CONTENT\x00"
# Fast tokenizers keep split_special_tokens as a flag on the shared Rust tokenizer, set by every
# call: flipping it for one thread would flip it for the others. Untrusted text goes through a
# private copy with the flag always on instead.
_SPLITTERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_SPLITTERS_LOCK = threading.Lock()


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
        if self.document_template.count("{text}") != 1:
            raise ValueError("document_template must contain '{text}' exactly once")
        if self.question_template.count("{query}") != 1:
            raise ValueError("question_template must contain '{query}' exactly once")
        head, tail = self._split_template()
        object.__setattr__(self, "_head", head)
        object.__setattr__(self, "_tail", tail)
        specials, special_ids = _special_tokens(self.tokenizer)
        object.__setattr__(self, "_specials", specials)
        object.__setattr__(self, "_special_ids", special_ids)

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

    def _encode(self, text: str, split_special: bool = False) -> list[int]:
        if not split_special:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        backend = _splitting_backend(self.tokenizer)
        if backend is not None:
            return list(backend.encode(text, add_special_tokens=False).ids)
        # Python tokenizers read split_special_tokens per call: no shared state to race on.
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _encode_untrusted(self, template: str, user: str, name: str) -> list[int]:
        """Ids of ``template`` (holding ``_SENTINEL`` once) with ``user`` text in its place; special
        tokens of the template stay control tokens, those written in ``user`` become plain text."""
        before, _, after = template.partition(_SENTINEL)
        specials: tuple[str, ...] = self._specials  # type: ignore[attr-defined]
        hit = next((s for s in specials if s in user), None)
        if hit is None:  # the common case: tokenized exactly as a plain string (chunk keys unchanged)
            return self._encode(before + user + after)
        # Split the template at its special tokens nearest to the user text, so that the run
        # tokenized with split_special_tokens holds no trusted control token.
        cut = max((before.rfind(s) + len(s) for s in specials if s in before), default=0)
        end = min((after.find(s) for s in specials if s in after), default=len(after))
        try:
            run = self._encode(before[cut:] + user + after[:end], split_special=True)
        except (TypeError, ValueError, NotImplementedError) as err:
            raise ValueError(
                f"{name} contains the special token {hit!r}, which this tokenizer "
                f"({type(self.tokenizer).__name__}) cannot encode as plain text: remove it"
            ) from err
        if set(run) & self._special_ids:  # type: ignore[attr-defined]
            raise ValueError(
                f"{name} contains the special token {hit!r}, which this tokenizer "
                f"({type(self.tokenizer).__name__}) still encodes as a control token: remove it"
            )
        head = self._encode(before[:cut]) if cut else []
        tail = self._encode(after[end:]) if end < len(after) else []
        return head + run + tail

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
        check_query(text, "passage text")
        return self._encode_untrusted(self.document_template.format(text=_SENTINEL), text, "passage text")

    def question_ids(self, query: str) -> list[int]:
        """Question segment + end of user turn + assistant header (generation starts after it)."""
        check_query(query)
        tail: str = self._tail  # type: ignore[attr-defined]
        return self._encode_untrusted(self.question_template.format(query=_SENTINEL) + tail, query, "query")

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


def _special_tokens(tok: PreTrainedTokenizerBase) -> tuple[tuple[str, ...], set[int]]:
    """The tokenizer's special-token strings (longest first) and their ids: the declared special
    tokens and every added token marked ``special`` (e.g. SmolLM2's ``<|im_start|>``)."""
    names = {str(t) for t in getattr(tok, "all_special_tokens", ()) or ()}
    ids = {int(i) for i in getattr(tok, "all_special_ids", ()) or ()}
    for i, added in (getattr(tok, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            names.add(str(added.content))
            ids.add(int(i))
    return tuple(sorted((n for n in names if n), key=len, reverse=True)), ids


def _splitting_backend(tok: PreTrainedTokenizerBase) -> Any:
    """A private copy of a fast tokenizer's Rust backend that never matches special tokens
    (``None`` for tokenizers without one)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        return None
    with _SPLITTERS_LOCK:
        splitter = _SPLITTERS.get(tok)
        if splitter is None:
            splitter = copy.deepcopy(backend)
            splitter.encode_special_tokens = True
            splitter.no_truncation()
            splitter.no_padding()
            _SPLITTERS[tok] = splitter
        return splitter
