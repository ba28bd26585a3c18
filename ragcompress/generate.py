"""The generator: a HF causal LM that answers a question from passages (the text path), and the
greedy decode loop any ready cache can be continued with.

This module knows nothing of KV chunks: the KV path (:mod:`ragcompress.kv.context`) builds a
cache from cached chunks and calls :meth:`Generator.iter_tokens` / :meth:`Generator.answer_of`.
Decoding is a plain loop over ``model.forward`` with an explicit cache, so that a caller can
start from a cache whose physical length differs from the logical positions (evicted tokens
keep their original positions).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.models.compat import cache_kwargs, output_cache
from ragcompress.prompt import PromptLayout
from ragcompress.types import Passage
from ragcompress.validate import check_max_new_tokens, check_request

if TYPE_CHECKING:
    from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Answer", "GenerationStats", "Generator"]

# Guards the lazy loads below: threads sharing a generator must not build two models/layouts.
_INIT = threading.RLock()
# tokenizer -> ids of the vocabulary entries holding a line break (base models stop there)
_NEWLINES: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()


def _newline_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of tokens containing a line break: literal (SentencePiece), ``Ċ`` (byte-level BPE) or
    the byte-fallback token ``<0x0A>``."""
    hit = _NEWLINES.get(tokenizer)
    if hit is None:
        vocab = tokenizer.get_vocab()
        hit = frozenset(i for t, i in vocab.items() if "\n" in t or "Ċ" in t or t == "<0x0A>")
        _NEWLINES[tokenizer] = hit
    return hit


@dataclass(frozen=True, slots=True)
class GenerationStats:
    prompt_tokens: int  # tokens prefilled for this request (question only on the KV path)
    context_tokens: int  # positions the first new token attends to (prefix + passages + question)
    new_tokens: int
    ttft_ms: float  # request start to first token sampled (prefill included)
    total_ms: float
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. chunks_hit / chunks_encoded

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "context_tokens": self.context_tokens,
            "new_tokens": self.new_tokens,
            "ttft_ms": self.ttft_ms,
            "total_ms": self.total_ms,
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]
    stats: GenerationStats


@dataclass
class Generator:
    """Answers questions with a causal LM and its chat template.

    ``model`` is an alias of a packaged model, a local path or an HF id (``None``: the packaged
    SmolLM2-135M-Instruct). Use :meth:`from_model` to wrap an already loaded model.

    Every entry point checks its arguments first (:mod:`ragcompress.validate`): ``query`` is a
    ``str``; ``passages`` a list of passages or strings (a single string is a ``TypeError``,
    not one passage per character); ``max_new_tokens`` ``None`` (this generator's
    ``max_new_tokens``) or an int >= 0, where 0 generates nothing and answers ``""``.
    """

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int = 48
    system: str = PromptLayout.system
    _lm: Any = field(default=None, init=False, repr=False)
    _tok: Any = field(default=None, init=False, repr=False)
    _layout: PromptLayout | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_max_new_tokens(self.max_new_tokens)

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs: Any
    ) -> Generator:
        gen = cls(**kwargs)
        gen._lm, gen._tok = model, tokenizer
        gen.device = str(model.device)
        return gen

    # -- lazily loaded parts ---------------------------------------------------------------
    @property
    def lm(self) -> PreTrainedModel:
        if self._lm is None:
            from ragcompress.models.load import load_reader

            with _INIT:
                if self._lm is None:
                    self._lm, self._tok = load_reader(self.model, self.device, self.dtype)
        return self._lm

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tok is None:
            from ragcompress.models.load import load_tokenizer

            with _INIT:
                if self._tok is None:
                    self._tok = load_tokenizer(self.model)
        return self._tok

    @property
    def layout(self) -> PromptLayout:
        if self._layout is None:
            with _INIT:
                if self._layout is None:
                    self._layout = PromptLayout(self.tokenizer, system=self.system)
        return self._layout

    @property
    def stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (self.tokenizer.eos_token_id, getattr(self.lm.generation_config, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, list | tuple):
                ids.update(int(i) for i in src)
        if not getattr(self.tokenizer, "chat_template", None):
            # a base model (plain completion prompt, see PromptLayout) has no end-of-turn token:
            # its answer is the first line
            ids.update(_newline_ids(self.tokenizer))
        return ids

    # -- text path -------------------------------------------------------------------------
    def generate(
        self, query: str, passages: Sequence[Passage] | Sequence[str], max_new_tokens: int | None = None
    ) -> Answer:
        """Prefill prefix + passages + question, then decode greedily."""
        ids = self.layout.prompt_ids([p.text for p in check_request(query, passages, max_new_tokens)], query)
        self.check_length(len(ids), max_new_tokens)
        return self.decode(ids, cache=None, max_new_tokens=max_new_tokens)

    def stream(
        self, query: str, passages: Sequence[Passage] | Sequence[str], max_new_tokens: int | None = None
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece as tokens are produced (arguments are checked
        and the prompt tokenized at the call, the model runs as pieces are asked for)."""
        ids = self.layout.prompt_ids([p.text for p in check_request(query, passages, max_new_tokens)], query)
        self.check_length(len(ids), max_new_tokens)
        return self.text_pieces(self.iter_tokens(ids, cache=None, max_new_tokens=max_new_tokens))

    # -- decode loop (the KV path continues its assembled cache with it) -------------------
    def decode(
        self,
        input_ids: list[int],
        cache: Cache | None,
        max_new_tokens: int | None = None,
        next_position: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Answer:
        """Prefill ``input_ids`` after ``cache`` (or from scratch) and decode greedily.

        ``next_position`` is the RoPE position of ``input_ids[0]``; it defaults to the cache's
        length and differs from it when the cache holds evicted (compressed) chunks.
        """
        start = time.perf_counter()
        timing: dict[str, float] = {}
        # read before decoding: the loop grows ``cache`` in place
        context = (next_position if next_position is not None else _cache_len(cache)) + len(input_ids)
        tokens = list(
            self.iter_tokens(input_ids, cache, max_new_tokens, next_position, timing=timing, start=start)
        )
        return self.answer_of(tokens, len(input_ids), context, start, timing.get("ttft_ms"), extra)

    def answer_of(
        self,
        tokens: Sequence[int],
        prompt_tokens: int,
        context_tokens: int,
        start: float,
        ttft_ms: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Answer:
        """The :class:`Answer` of greedy ``tokens``, whatever loop or engine decoded them:
        ``prompt_tokens`` prefilled for the request, ``context_tokens`` positions the first new
        token attended to, ``start`` the request's ``perf_counter()``, ``ttft_ms`` None: the
        total time (nothing was decoded or the engine did not time token 1)."""
        total = (time.perf_counter() - start) * 1e3
        stats = GenerationStats(
            prompt_tokens=prompt_tokens,
            context_tokens=context_tokens,
            new_tokens=len(tokens),
            ttft_ms=total if ttft_ms is None else ttft_ms,
            total_ms=total,
            extra=dict(extra or {}),
        )
        text = str(self.tokenizer.decode(list(tokens), skip_special_tokens=True)).strip()
        return Answer(text=text, token_ids=tuple(tokens), stats=stats)

    def iter_tokens(
        self,
        input_ids: list[int],
        cache: Cache | None,
        max_new_tokens: int | None = None,
        next_position: int | None = None,
        timing: dict[str, float] | None = None,
        start: float | None = None,
        step_kwargs: Callable[[int, int], dict[str, Any]] | None = None,
    ) -> Iterator[int]:
        """Greedy token ids, one at a time; stops at an end-of-turn token (not yielded).

        ``step_kwargs(physical, n)``: extra forward arguments for ``n`` tokens written at cache slot
        ``physical`` (an assembly mode's attention mask)."""
        import torch
        from transformers import DynamicCache

        lm = self.lm
        new = check_max_new_tokens(max_new_tokens)
        limit = self.max_new_tokens if new is None else new
        start = time.perf_counter() if start is None else start
        cache = DynamicCache(config=lm.config) if cache is None else cache
        physical = _cache_len(cache)
        position = physical if next_position is None else next_position
        stops = self.stop_ids
        step = torch.tensor([input_ids], dtype=torch.long, device=lm.device)
        with torch.inference_mode():
            for i in range(limit):
                n = step.shape[1]
                out = lm(
                    input_ids=step,
                    **cache_kwargs(lm, cache),
                    use_cache=True,
                    position_ids=torch.arange(position, position + n, device=lm.device)[None],
                    cache_position=torch.arange(physical, physical + n, device=lm.device),
                    logits_to_keep=1,
                    **(step_kwargs(physical, n) if step_kwargs is not None else {}),
                )
                cache = output_cache(out)
                physical += n
                position += n
                token = int(out.logits[0, -1].argmax())
                if i == 0 and timing is not None:
                    if lm.device.type == "cuda":
                        torch.cuda.synchronize(lm.device)
                    timing["ttft_ms"] = (time.perf_counter() - start) * 1e3
                if token in stops:
                    return
                yield token
                step = torch.tensor([[token]], dtype=torch.long, device=lm.device)

    def text_pieces(self, tokens: Iterator[int]) -> Iterator[str]:
        """The text of greedy ``tokens`` piece by piece, as they come (what :meth:`stream` yields)."""
        # Decode the growing sequence and yield the new suffix: byte-level BPE pieces may not
        # be valid text on their own, so decoding token by token would garble multi-byte chars.
        ids: list[int] = []
        shown = ""
        for tok in tokens:
            ids.append(tok)
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(shown):
                yield text[len(shown) :]
                shown = text

    def check_length(self, n: int, max_new_tokens: int | None) -> None:
        """Raise ``ValueError`` when a prompt of ``n`` tokens plus ``max_new_tokens`` (None: this
        generator's) would not fit the model's context (``max_position_embeddings``)."""
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit is not None and n + new > limit:
            raise ValueError(
                f"prompt of {n} tokens + {new} new tokens exceeds the model's context of {limit}; "
                "compress harder or pass fewer passages"
            )


def _cache_len(cache: Cache | None) -> int:
    if cache is None:
        return 0
    return int(cache.get_seq_length())
