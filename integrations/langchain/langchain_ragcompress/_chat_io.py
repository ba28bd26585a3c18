"""What ``ChatRagCompress`` reads from LangChain messages and how it shapes the text it returns:
messages → (role, text) turns, turns → chat-template token ids (text path), the KV path's
request (question and history) and the documents channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage

from langchain_ragcompress.compressor import _to_passages
from ragcompress.types import Passage

__all__ = ["chat_ids", "kv_request", "passages_of", "turns_of"]

Turn = tuple[str, str]  # (role, text): role is "system", "user" or "assistant"

_SENTINEL = "\x00RAGCOMPRESS_TURN_{}\x00"


def turns_of(messages: Sequence[BaseMessage]) -> list[Turn]:
    """(role, text) per message, consecutive messages of one role merged (templates such as
    Llama-2's and Mistral's refuse two user turns in a row). Tool messages and non-text content
    are refused: this model calls no tools and reads no images."""
    turns: list[Turn] = []
    for i, msg in enumerate(messages):
        role = _role(i, msg)
        text = _text(i, msg)
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + text)
        else:
            turns.append((role, text))
    if not turns:
        raise ValueError("messages is empty: give at least one message")
    return turns


def _role(i: int, msg: BaseMessage) -> str:
    if isinstance(msg, SystemMessage):
        return "system"
    if isinstance(msg, HumanMessage):
        return "user"
    if isinstance(msg, AIMessage):
        if msg.tool_calls:
            raise ValueError(
                f"message #{i}: ChatRagCompress does not call tools (an AIMessage with tool_calls)"
            )
        return "assistant"
    if isinstance(msg, ChatMessage) and msg.role in ("system", "user", "assistant"):
        return msg.role
    raise ValueError(
        f"message #{i}: ChatRagCompress reads system, human and AI messages, got {type(msg).__name__}"
        + (f" with role {msg.role!r}" if isinstance(msg, ChatMessage) else "")
    )


def _text(i: int, msg: BaseMessage) -> str:
    if isinstance(msg.content, str):
        return msg.content
    for block in msg.content:
        kind = block.get("type") if isinstance(block, dict) else "text"
        if kind != "text":
            raise ValueError(f"message #{i}: ChatRagCompress reads text only, got a {kind!r} content block")
    return msg.text


def chat_ids(tokenizer: Any, turns: Sequence[Turn]) -> list[int]:
    """Token ids of the conversation in the tokenizer's chat template, ending with the
    assistant header. Message text is tokenized on its own, so a special token written in it
    (``<|im_end|>`` …) cannot pass for the control token: such text is a ``ValueError``."""
    specials = _specials(tokenizer)
    for i, (_, text) in enumerate(turns):
        hit = next((s for s in specials if s in text), None)
        if hit is not None:
            raise ValueError(f"turn #{i} contains the special token {hit!r}: remove it")
    if not getattr(tokenizer, "chat_template", None):  # base model: a plain transcript
        rendered = (
            "".join(f"{role}: {_SENTINEL.format(i)}\n" for i, (role, _) in enumerate(turns)) + "assistant:"
        )
    else:
        msgs = [{"role": role, "content": _SENTINEL.format(i)} for i, (role, _) in enumerate(turns)]
        rendered = str(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    ids: list[int] = []
    for i, (_, text) in enumerate(turns):
        before, sep, rendered = rendered.partition(_SENTINEL.format(i))
        if not sep:
            raise ValueError(f"the chat template dropped turn #{i}: this model cannot take this conversation")
        ids += _encode(tokenizer, before) + _encode(tokenizer, text)
    ids += _encode(tokenizer, rendered)
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] and ids[:1] != [bos]:
        ids.insert(0, bos)  # the tokenizer adds BOS to a prompt and the template did not
    return ids


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _specials(tokenizer: Any) -> list[str]:
    found = set(getattr(tokenizer, "all_special_tokens", []))
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok.content))
    return sorted((s for s in found if s), key=len, reverse=True)


def kv_request(turns: Sequence[Turn]) -> tuple[str, list[Turn]]:
    """The KV path's question (the last user turn) and history (the turns before it, system
    messages included), which ragcompress renders after the chunks: the prefix and the chunks
    stay cached and shared."""
    if turns[-1][0] != "user":
        raise ValueError("with documents, the last message must be a human message (the question)")
    *history, (_, question) = turns
    return question, history


def passages_of(documents: object, name: str = "documents") -> list[Passage]:
    """One passage per document, in order; ``Document`` ids (or content hashes) become chunk ids,
    a ``str`` is a document's text. A single document or string is refused (not a list)."""
    if isinstance(documents, str | Document) or not isinstance(documents, Sequence):
        raise TypeError(f"{name} must be a list of Documents, got {type(documents).__name__}")
    docs = [Document(page_content=d) if isinstance(d, str) else d for d in documents]
    for i, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise TypeError(
                f"{name}: document #{i} must be a langchain Document or str, got {type(doc).__name__}"
            )
    return _to_passages(docs)
