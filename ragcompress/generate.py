"""The generator: a HF causal LM that answers a question from passages (the text path), and the
decode loop any ready cache can be continued with (greedy by default, or sampled: see
:mod:`ragcompress.sampling`).

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
from typing import TYPE_CHECKING, Any, cast

from ragcompress.models.compat import cache_kwargs, output_cache
from ragcompress.prompt import PromptLayout, check_history
from ragcompress.sampling import (
    GREEDY,
    Sampling,
    StopScanner,
    check_sampling,
    pick_token,
    request_rng,
    trim_at_stop,
)
from ragcompress.streaming import AnswerMethods, Begin, Request
from ragcompress.validate import check_max_new_tokens, check_request

if TYPE_CHECKING:
    from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Answer", "GenerationStats", "Generator", "decode", "model_stop_ids"]

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
class Generator(AnswerMethods):
    """Answers questions with a causal LM and its chat template.

    ``model`` is an alias of a packaged model, a local path or an HF id (``None``: the packaged
    SmolLM2-135M-Instruct). Use :meth:`from_model` to wrap an already loaded model.

    Every entry point checks its arguments first (:mod:`ragcompress.validate`): ``query`` is a
    ``str``; ``passages`` a list of passages or strings (a single string is a ``TypeError``,
    not one passage per character); ``max_new_tokens`` ``None`` (this generator's
    ``max_new_tokens``) or an int >= 0, where 0 generates nothing and answers ``""``;
    ``sampling`` a :class:`~ragcompress.sampling.Sampling` or None (greedy); ``history`` None
    or prior chat turns as ``(role, content)`` pairs (roles ``system``/``user``/``assistant``),
    rendered between the passages and the question (:mod:`ragcompress.prompt`).
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
    def _loaded(self, attr: str, load: Callable[[], None]) -> Any:
        """``self.<attr>``, filled in by ``load()`` on first use (once across threads)."""
        if getattr(self, attr) is None:
            with _INIT:
                if getattr(self, attr) is None:
                    load()
        return getattr(self, attr)

    def _load_reader(self) -> None:
        from ragcompress.models.load import load_reader

        self._lm, self._tok = load_reader(self.model, self.device, self.dtype)

    def _load_tokenizer(self) -> None:
        from ragcompress.models.load import load_tokenizer

        self._tok = load_tokenizer(self.model)

    def _load_layout(self) -> None:
        self._layout = PromptLayout(self.tokenizer, system=self.system)

    @property
    def lm(self) -> PreTrainedModel:
        return self._loaded("_lm", self._load_reader)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._loaded("_tok", self._load_tokenizer)

    @property
    def layout(self) -> PromptLayout:
        return cast(PromptLayout, self._loaded("_layout", self._load_layout))

    @property
    def stop_ids(self) -> set[int]:
        ids = model_stop_ids(self.lm)
        if isinstance(self.tokenizer.eos_token_id, int):
            ids.add(self.tokenizer.eos_token_id)
        if not getattr(self.tokenizer, "chat_template", None):
            # a base model (plain completion prompt, see PromptLayout) has no end-of-turn token:
            # its answer is the first line
            ids.update(_newline_ids(self.tokenizer))
        return ids

    # -- text path -------------------------------------------------------------------------
    #: Prefill prefix + passages + [history +] question, then decode (greedy by default).
    generate = AnswerMethods._whole

    def _decoder(self) -> Generator:
        return self

    def _request(self, ask: Request) -> tuple[Begin, Sampling]:
        """The text path: the prompt is checked and tokenized now, the model runs in ``begin``."""
        max_new_tokens = ask.max_new_tokens
        texts = [p.text for p in check_request(ask.query, ask.passages, max_new_tokens)]
        checked = check_sampling(ask.sampling)
        ids = self.layout.prompt_ids(texts, ask.query, check_history(ask.history))
        self.check_length(len(ids), max_new_tokens)

        def begin() -> tuple[Iterator[int], Callable[[list[int]], Answer]]:
            start, timing = time.perf_counter(), dict[str, float]()
            tokens = self.iter_tokens(ids, None, max_new_tokens, timing=timing, start=start, sampling=checked)

            def finish(done: list[int]) -> Answer:
                ttft = timing.get("ttft_ms")
                return self.answer_of(done, len(ids), len(ids), start, ttft, stop=checked.stop)

            return tokens, finish

        return begin, checked

    # -- decode loop (the KV path continues its assembled cache with it) -------------------
    def decode(
        self,
        input_ids: list[int],
        cache: Cache | None,
        max_new_tokens: int | None = None,
        next_position: int | None = None,
        extra: dict[str, Any] | None = None,
        sampling: Sampling | None = None,
    ) -> Answer:
        """Prefill ``input_ids`` after ``cache`` (or from scratch) and decode with ``sampling``
        (None: greedy), ending early at a stop token or stop string.

        ``next_position`` is the RoPE position of ``input_ids[0]``; it defaults to the cache's
        length and differs from it when the cache holds evicted (compressed) chunks.
        """
        start = time.perf_counter()
        timing: dict[str, float] = {}
        # read before decoding: the loop grows ``cache`` in place
        context = (next_position if next_position is not None else _cache_len(cache)) + len(input_ids)
        sampling = check_sampling(sampling)
        steps = self.iter_tokens(
            input_ids, cache, max_new_tokens, next_position, timing=timing, start=start, sampling=sampling
        )
        tokens = list(self.until_stop(steps, sampling.stop))
        return self.answer_of(
            tokens, len(input_ids), context, start, timing.get("ttft_ms"), extra, stop=sampling.stop
        )

    def answer_of(
        self,
        tokens: Sequence[int],
        prompt_tokens: int,
        context_tokens: int,
        start: float,
        ttft_ms: float | None = None,
        extra: dict[str, Any] | None = None,
        stop: Sequence[str] = (),
    ) -> Answer:
        """The :class:`Answer` of ``tokens``, whatever loop or engine decoded them:
        ``prompt_tokens`` prefilled for the request, ``context_tokens`` positions the first new
        token attended to, ``start`` the request's ``perf_counter()``, ``ttft_ms`` None: the
        total time (nothing was decoded or the engine did not time token 1). The text ends
        before the first of the ``stop`` strings (``token_ids`` keep every decoded token)."""
        total = (time.perf_counter() - start) * 1e3
        stats = GenerationStats(
            prompt_tokens=prompt_tokens,
            context_tokens=context_tokens,
            new_tokens=len(tokens),
            ttft_ms=total if ttft_ms is None else ttft_ms,
            total_ms=total,
            extra=dict(extra or {}),
        )
        text = trim_at_stop(self._text(tokens), stop)[0].strip()
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
        sampling: Sampling = GREEDY,
    ) -> Iterator[int]:
        """Token ids chosen by ``sampling``, one at a time; stops at an end-of-turn token (not
        yielded). Stop strings are the caller's (:meth:`until_stop`, :meth:`text_pieces`).

        ``step_kwargs(physical, n)``: extra forward arguments for ``n`` tokens written at cache slot
        ``physical`` (an assembly mode's attention mask)."""
        import torch
        from transformers import DynamicCache

        lm = self.lm
        new = check_max_new_tokens(max_new_tokens)
        limit = self.max_new_tokens if new is None else new
        start = time.perf_counter() if start is None else start
        cache = DynamicCache(config=lm.config) if cache is None else cache

        def first() -> None:
            if timing is not None:
                if lm.device.type == "cuda":
                    torch.cuda.synchronize(lm.device)
                timing["ttft_ms"] = (time.perf_counter() - start) * 1e3

        yield from decode(
            lm, input_ids, cache, limit, next_position, self.stop_ids, step_kwargs, sampling, first
        )

    def text_pieces(self, tokens: Iterator[int], stop: Sequence[str] = ()) -> Iterator[str]:
        """The text of ``tokens`` piece by piece, as they come (what :meth:`stream` yields),
        ending before the first ``stop`` string: no piece shows any part of it, and no token
        is asked for after it is complete."""
        # Decode the growing sequence and yield the new suffix: byte-level BPE pieces may not
        # be valid text on their own, so decoding token by token would garble multi-byte chars.
        scanner = StopScanner(stop)
        ids: list[int] = []
        shown = ""
        for tok in tokens:
            ids.append(tok)
            text = self._text(ids)
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(shown):
                piece = scanner.feed(text[len(shown) :])
                shown = text
                if piece:
                    yield piece
                if scanner.stopped:
                    return
        rest = scanner.flush()
        if rest:
            yield rest

    def until_stop(self, tokens: Iterator[int], stop: Sequence[str]) -> Iterator[int]:
        """``tokens`` up to the one whose text completes a ``stop`` string (included; the
        answer's text is trimmed by :meth:`answer_of`): decoding ends there."""
        if not stop:
            yield from tokens
            return
        ids: list[int] = []
        for tok in tokens:
            ids.append(tok)
            yield tok
            if trim_at_stop(self._text(ids), stop)[1]:
                return

    def _text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

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


def model_stop_ids(lm: PreTrainedModel) -> set[int]:
    """The end-of-sequence ids of ``lm``'s generation config (the tokenizer may add its own)."""
    eos = getattr(lm.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        return {eos}
    return {int(i) for i in eos} if isinstance(eos, list | tuple) else set()


def decode(
    lm: PreTrainedModel,
    input_ids: Sequence[int],
    cache: Cache,
    limit: int,
    next_position: int | None = None,
    stops: set[int] | frozenset[int] = frozenset(),
    step_kwargs: Callable[[int, int], dict[str, Any]] | None = None,
    sampling: Sampling = GREEDY,
    first: Callable[[], None] | None = None,
) -> Iterator[int]:
    """Up to ``limit`` token ids chosen by ``sampling`` after ``input_ids``, decoded into ``cache``
    (which grows by each step's K/V) from its end, at logical position ``next_position`` (None:
    the cache's length) on; a token of ``stops`` ends it (not yielded). ``first()`` runs once the
    first token is chosen (a TTFT clock); ``step_kwargs``: as in :meth:`Generator.iter_tokens`."""
    import torch

    physical = _cache_len(cache)
    position = physical if next_position is None else next_position
    rng = request_rng(sampling, lm.device)
    step = torch.tensor([list(input_ids)], dtype=torch.long, device=lm.device)
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
            token = pick_token(out.logits[0, -1], sampling, rng)
            if i == 0 and first is not None:
                first()
            if token in stops:
                return
            yield token
            step = torch.tensor([[token]], dtype=torch.long, device=lm.device)


def _cache_len(cache: Cache | None) -> int:
    if cache is None:
        return 0
    return int(cache.get_seq_length())
