"""The prompt layout shared by the text path and the KV path.

A prompt is a concatenation of token-id segments::

    prefix            BOS + the chat template up to the user's content + the instruction
    passage_1 .. k    one segment per passage ("Document: ...\\n\\n"), tokenized on its own
    question          "Question: ..." + the chat template's end of user turn + assistant header

Chat history (prior turns of a conversation, ``(role, content)`` pairs) goes into the question
segment, after the passages and before the question: the documents stay at the start of the
first user turn, the prior turns follow as turns of their own, and the question opens a new
user turn (``[system] [user: instruction + documents] [history...] [user: question]``). Since
the prefix and the passage segments do not change, chunk keys and cached chunks are the same
with or without history. History is rendered through the tokenizer's chat template; a tokenizer
without one, or a template that refuses that turn order (e.g. one that insists on alternating
roles), gets a plain ``"User: ..."`` / ``"Assistant: ..."`` rendering inside the current user
turn, just before the question. History text is untrusted like passage text.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.validate import check_query

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["ROLES", "PromptLayout", "check_history"]

_SENTINEL = "\x00RAGCOMPRESS_USER_CONTENT\x00"
#: The roles a history turn may have.
ROLES = ("system", "user", "assistant")
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

    def question_ids(self, query: str, history: Sequence[tuple[str, str]] | None = None) -> list[int]:
        """[History turns +] question segment + end of user turn + assistant header (generation
        starts after it). ``history``: prior ``(role, content)`` turns, see the module doc."""
        check_query(query)
        turns = check_history(history)
        tail: str = self._tail  # type: ignore[attr-defined]
        question = self.question_template.format(query=_SENTINEL) + tail
        if not turns:
            return self._encode_untrusted(question, query, "query")
        befores, last = self._history_templates(turns)
        ids: list[int] = []
        for i, (before, (_, content)) in enumerate(zip(befores, turns, strict=True)):
            ids.extend(self._encode_untrusted(before + _SENTINEL, content, f"history[{i}] content"))
        return ids + self._encode_untrusted(last + question, query, "query")

    def _history_templates(self, turns: Sequence[tuple[str, str]]) -> tuple[list[str], str]:
        """``(text before each turn's content, text between the last turn and the question)``."""
        head: str = self._head  # type: ignore[attr-defined]
        tail: str = self._tail  # type: ignore[attr-defined]
        marks = [f"\x00RAGCOMPRESS_TURN_{i}\x00" for i in range(len(turns) + 1)]
        rendered = _render_chat(
            self.tokenizer, self.system, [(r, m) for (r, _), m in zip(turns, marks, strict=False)], marks[-1]
        )
        if (
            rendered is not None
            and rendered.startswith(head + _SENTINEL)
            and rendered.endswith(marks[-1] + tail)
        ):
            rest = rendered[len(head + _SENTINEL) : -len(marks[-1] + tail)] + marks[-1]
            parts: list[str] = []
            for mark in marks:
                before, sep, rest = rest.partition(mark)
                if not sep:
                    break
                parts.append(before)
            if len(parts) == len(marks) and not any(_SENTINEL in p or "\x00RAGCOMPRESS" in p for p in parts):
                return parts[:-1], parts[-1]
        # no chat template, or one that refuses this turn order: plain lines before the question
        return [("\n" if i else "") + f"{role.capitalize()}: " for i, (role, _) in enumerate(turns)], "\n\n"

    def prompt_ids(
        self, passages: list[str], query: str, history: Sequence[tuple[str, str]] | None = None
    ) -> list[int]:
        """The whole prompt, exactly as the text path prefills it."""
        ids = self.prefix_ids()
        for text in passages:
            ids.extend(self.passage_ids(text))
        ids.extend(self.question_ids(query, history))
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


def check_history(history: object, name: str = "history") -> tuple[tuple[str, str], ...]:
    """``history`` as a tuple of ``(role, content)`` pairs (None: no history); roles are
    ``"system"``, ``"user"`` or ``"assistant"``, contents strings."""
    if history is None:
        return ()
    if isinstance(history, str | bytes) or not isinstance(history, Sequence):
        raise TypeError(f"{name} must be a sequence of (role, content) pairs, got {type(history).__name__}")
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(history):
        if isinstance(turn, str | bytes) or not isinstance(turn, Sequence) or len(turn) != 2:
            raise TypeError(f"{name}[{i}] must be a (role, content) pair, got {turn!r:.80}")
        role, content = turn
        if role not in ROLES:
            raise ValueError(f"{name}[{i}]: role must be one of {', '.join(ROLES)}; got {role!r}")
        turns.append((role, check_query(content, f"{name}[{i}] content")))
    return tuple(turns)


def _render_chat(
    tok: PreTrainedTokenizerBase, system: str, turns: list[tuple[str, str]], question: str
) -> str | None:
    """The chat template over system, the documents' user turn (``_SENTINEL``), ``turns`` and the
    question's user turn, as :meth:`PromptLayout._split_template` renders it (None: no template,
    or the template refuses it)."""
    if not getattr(tok, "chat_template", None):
        return None
    rest = [{"role": r, "content": c} for r, c in turns] + [{"role": "user", "content": question}]
    for first in (
        [{"role": "system", "content": system}, {"role": "user", "content": _SENTINEL}],
        [{"role": "user", "content": system + "\n\n" + _SENTINEL}],
    ):
        try:
            rendered = tok.apply_chat_template(first + rest, add_generation_prompt=True, tokenize=False)
        except Exception:  # a template's own refusal (raise_exception): try the next form
            continue
        if isinstance(rendered, str):
            return rendered
    return None


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
