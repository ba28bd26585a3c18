"""LlamaIndex chat messages → the prompt token ids of the reader's own chat template.

Message text is untrusted (a retrieved document in a context chat engine's system message, a
user's pasted text): a special-token string written in it (``<|im_end|>``, ``<|im_start|>``, …)
is encoded as plain text, never as the control token, so a message cannot close its turn or
open another one. Messages without such strings are tokenized exactly as the rendered
template would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["chat_ids", "message_text", "message_turns"]

# LlamaIndex roles → chat-template roles. Tool and function turns have no place in a reader
# without tool calling: they are refused rather than passed as text the model cannot place.
_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


def message_text(i: int, message: ChatMessage) -> str:
    """The text of message #``i``; ``ValueError`` naming it for image/audio/tool blocks."""
    if not isinstance(message, ChatMessage):
        raise TypeError(f"message #{i} must be a llama_index ChatMessage, got {type(message).__name__}")
    other = [type(b).__name__ for b in message.blocks if not isinstance(b, TextBlock)]
    if other:
        raise ValueError(f"message #{i} holds {', '.join(other)}: this reader reads text only")
    return "".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def message_turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """``(role, text)`` of each message, roles ``system``/``user``/``assistant``; ``ValueError``
    naming the message for other roles or non-text blocks, and for no message at all."""
    if not messages:
        raise ValueError("messages must hold at least one message")
    turns = []
    for i, m in enumerate(messages):
        role = _ROLES.get(m.role) if isinstance(m, ChatMessage) else None
        if isinstance(m, ChatMessage) and role is None:
            raise ValueError(
                f"message #{i} has role {m.role.value!r}: this reader takes system, user and assistant"
            )
        turns.append((role or "", message_text(i, m)))
    return turns


def _turns(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in message_turns(messages)]


def _render(tok: PreTrainedTokenizerBase, turns: list[dict[str, str]]) -> str:
    try:
        rendered = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    except Exception:  # templates that reject a system turn: fold it into the next user turn
        folded: list[dict[str, str]] = []
        pending: list[str] = []
        for t in turns:
            if t["role"] == "system":
                pending.append(t["content"])
                continue
            if pending and t["role"] == "user":
                t = {**t, "content": "\n\n".join([*pending, t["content"]])}
                pending = []
            folded.append(t)
        rendered = tok.apply_chat_template(folded, add_generation_prompt=True, tokenize=False)
    return str(rendered)


def chat_ids(tok: PreTrainedTokenizerBase, messages: Sequence[ChatMessage]) -> list[int]:
    """Prompt ids of ``messages`` in the tokenizer's chat template, ending with the assistant
    header (generation starts after it); BOS first when the tokenizer uses one."""
    if not getattr(tok, "chat_template", None):
        raise ValueError(
            f"the reader's tokenizer ({type(tok).__name__}) has no chat template: "
            "chat needs an instruct model (e.g. the packaged smollm2-135m-instruct)"
        )
    turns = _turns(messages)
    specials = _special_strings(tok)
    marks = [f"\x00RAGCOMPRESS_MESSAGE_{i}\x00" for i in range(len(turns))]
    rendered = _render(tok, [{**t, "content": m} for t, m in zip(turns, marks, strict=True)])
    pieces: list[tuple[str, bool]] = []  # (text, is message content)
    rest = rendered
    for turn, mark in zip(turns, marks, strict=True):
        before, found, rest = rest.partition(mark)
        if not found:  # a template that drops or rewrites a turn: we cannot tell where text goes
            raise ValueError(
                f"the chat template of {type(tok).__name__} drops or rewrites a {turn['role']} turn"
            )
        pieces += [(before, False), (turn["content"], True)]
    pieces.append((rest, False))
    if not any(s in text for text, content in pieces if content for s in specials):
        ids = _encode(tok, "".join(text for text, _ in pieces))  # the common case: as HF renders it
    else:
        ids = [
            i
            for text, content in pieces
            for i in (_plain(tok, text, specials) if content else _encode(tok, text))
        ]
    bos = tok.bos_token_id
    if bos is not None and tok("a")["input_ids"][:1] == [bos] and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


def _encode(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def _plain(tok: PreTrainedTokenizerBase, text: str, specials: tuple[str, ...]) -> list[int]:
    """Ids of ``text`` with each special-token string in it encoded as plain characters: the
    string is cut before its last character, so no piece matches the control token. Thread
    safe (no tokenizer flag is flipped); ``ValueError`` if a control id still comes out."""
    ids: list[int] = []
    while text:
        at, hit = min(((text.find(s), s) for s in specials if s in text), default=(-1, ""))
        if at < 0:
            ids += _encode(tok, text)
            break
        ids += _encode(tok, text[:at]) + _encode(tok, hit[:-1]) + _encode(tok, hit[-1:])
        text = text[at + len(hit) :]
    if set(ids) & _special_ids(tok):
        raise ValueError(f"a message holds a special token that {type(tok).__name__} cannot encode as text")
    return ids


def _special_strings(tok: Any) -> tuple[str, ...]:
    names = {str(t) for t in getattr(tok, "all_special_tokens", ()) or ()}
    for added in (getattr(tok, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            names.add(str(added.content))
    return tuple(sorted((n for n in names if n), key=len, reverse=True))


def _special_ids(tok: Any) -> set[int]:
    ids = {int(i) for i in getattr(tok, "all_special_ids", ()) or ()}
    decoder = getattr(tok, "added_tokens_decoder", None) or {}
    return ids | {int(i) for i, added in decoder.items() if getattr(added, "special", False)}
