"""Prefix KV + chunks → ready context for one model, and the eager KV path's answers from it.

:func:`prepare_context` is the one place where an assembly mode turns chunks into a
:class:`~ragcompress.kv.assembly.Context`; answering, streaming and teacher forcing all go through it.
:func:`generate_from_chunks` / :func:`stream_from_chunks` continue that context with the
generator's decode loop (the generator itself knows nothing of chunks), and :func:`chunk_answer`
is the answer of any engine that decoded from chunks.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assembly import Assembly, Context, build_assembly
from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.encode.encoder import prefix_kv
from ragcompress.models.compat import cache_kwargs
from ragcompress.models.rope import Rotary
from ragcompress.prompt import PromptLayout, check_history
from ragcompress.sampling import GREEDY, Sampling, check_sampling
from ragcompress.streaming import AnswerStream
from ragcompress.validate import check_max_new_tokens, check_query

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.generate import Answer, Generator

__all__ = [
    "begin_from_chunks",
    "chunk_answer",
    "chunk_context",
    "chunk_prompt",
    "chunk_sizes",
    "generate_from_chunks",
    "prepare_context",
    "rotary_of",
    "stream_from_chunks",
    "teacher_forced",
]


_ROTARY: weakref.WeakKeyDictionary[Any, Rotary] = weakref.WeakKeyDictionary()


def rotary_of(model: PreTrainedModel) -> Rotary:
    rot = _ROTARY.get(model)
    if rot is None:
        rot = _ROTARY[model] = Rotary.from_model(model)
    return rot


def prepare_context(
    model: PreTrainedModel,
    layout: PromptLayout,
    chunks: Sequence[KVChunk],
    question: Sequence[int],
    assembly: Assembly | Mapping[str, Any] | None = None,
) -> Context:
    """The context the question ``question`` (token ids) is prefilled after, under ``assembly``
    (an object, a spec, or None: ``concat``); ``ctx.mode`` is the mode's name."""
    mode = build_assembly(assembly)
    mode.bind(model, layout.tokenizer)  # for the module's own callers; a lookup once bound
    ctx = mode.prepare(model, prefix_kv(model, layout), chunks, question)
    ctx.mode = mode.name
    return ctx


def chunk_context(
    model: PreTrainedModel, layout: PromptLayout, chunks: Sequence[KVChunk]
) -> tuple[DynamicCache, int]:
    """``(cache, next_position)``: the shared prefix then ``chunks`` in order, re-positioned (``concat``)."""
    ctx = prepare_context(model, layout, chunks, ())
    return ctx.cache, ctx.position


def teacher_forced(
    model: PreTrainedModel, ctx: Context, question: Sequence[int], targets: Sequence[int]
) -> torch.Tensor:
    """(len(targets), vocab) fp32 log-probabilities of each target token given the context, the
    question and the previous targets: one forward of ``question + targets[:-1]`` after ``ctx``."""
    import torch

    ids = [*question, *targets[:-1]]
    physical, n = ctx.cache.get_seq_length(), len(ids)
    if not targets:
        return torch.zeros(0, model.config.vocab_size)
    dev = model.device
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=dev),
            position_ids=torch.arange(ctx.position, ctx.position + n, device=dev)[None],
            cache_position=torch.arange(physical, physical + n, device=dev),
            use_cache=True,
            logits_to_keep=len(targets),
            **cache_kwargs(model, ctx.cache),
            **ctx.step_kwargs(physical, n),
        )
    return out.logits[0].float().log_softmax(dim=-1)


def chunk_prompt(
    generator: Generator,
    query: str,
    chunks: Sequence[KVChunk],
    max_new_tokens: int | None,
    assembly: Assembly | Mapping[str, Any] | None,
    history: Sequence[tuple[str, str]] | None = None,
) -> tuple[list[int], Context]:
    """``(question ids, context)``: the checked question (after the ``history`` turns) and the
    context it is prefilled after; ``ValueError`` when context + question + ``max_new_tokens``
    exceed the model's length."""
    check_query(query)
    check_max_new_tokens(max_new_tokens)
    ids = generator.layout.question_ids(query, check_history(history))
    ctx = prepare_context(generator.lm, generator.layout, chunks, ids, assembly)
    generator.check_length(ctx.position + len(ids), max_new_tokens)
    return ids, ctx


def begin_from_chunks(
    generator: Generator,
    query: str,
    chunks: Sequence[KVChunk],
    max_new_tokens: int | None = None,
    *,
    extra: dict[str, Any] | None = None,
    start: float | None = None,
    assembly: Assembly | Mapping[str, Any] | None = None,
    sampling: Sampling = GREEDY,
    history: Sequence[tuple[str, str]] = (),
) -> tuple[Iterator[int], Callable[[list[int]], Answer]]:
    """Start an eager KV-path request: assemble the shared prefix + ``chunks`` (in order) under
    ``assembly`` (None: ``concat``), then ``(the token ids as they are decoded, finish(tokens) ->
    Answer)``; the question ([``history`` +] question) is prefilled when the first token is
    asked for. Both :func:`generate_from_chunks` and streaming start here."""
    start = time.perf_counter() if start is None else start
    ids, ctx = chunk_prompt(generator, query, chunks, max_new_tokens, assembly, history)
    timing: dict[str, float] = {}
    steps = generator.iter_tokens(
        ids,
        ctx.cache,
        max_new_tokens,
        ctx.position,
        timing=timing,
        start=start,
        step_kwargs=ctx.step_kwargs,
        sampling=sampling,
    )

    def finish(tokens: list[int]) -> Answer:
        info = {"assembly": ctx.mode, "recompute": ctx.recompute, **(extra or {})}
        ttft = timing.get("ttft_ms")
        return chunk_answer(
            generator, tokens, len(ids), ctx.position, chunks, start, ttft, info, sampling.stop
        )

    return steps, finish


def generate_from_chunks(
    generator: Generator,
    query: str,
    chunks: Sequence[KVChunk],
    max_new_tokens: int | None = None,
    *,
    extra: dict[str, Any] | None = None,
    start: float | None = None,
    assembly: Assembly | Mapping[str, Any] | None = None,
    sampling: Sampling | None = None,
    history: Sequence[tuple[str, str]] | None = None,
) -> Answer:
    """Assemble the shared prefix + ``chunks`` (in order) under ``assembly`` (None: ``concat``),
    prefill only [``history`` +] the question, decode with ``sampling`` (None: greedy) on
    ``generator``'s model.

    ``start`` (a ``time.perf_counter()`` value) lets callers count chunk lookup in TTFT;
    ``extra`` is merged into ``stats.extra`` (which always gets ``chunks``, ``chunk_tokens``,
    ``chunk_tokens_full``, ``ttft_ms``, ``assembly`` — the mode's name — and ``recompute``, the
    share of chunk tokens recomputed).
    """
    checked = check_sampling(sampling)
    steps, finish = begin_from_chunks(
        generator,
        query,
        chunks,
        max_new_tokens,
        extra=extra,
        start=start,
        assembly=assembly,
        sampling=checked,
        history=check_history(history),
    )
    return finish(list(generator.until_stop(steps, checked.stop)))


def stream_from_chunks(
    generator: Generator,
    query: str,
    chunks: Sequence[KVChunk],
    max_new_tokens: int | None = None,
    assembly: Assembly | Mapping[str, Any] | None = None,
    sampling: Sampling | None = None,
    history: Sequence[tuple[str, str]] | None = None,
) -> AnswerStream:
    """Like :func:`generate_from_chunks`, yielding the answer's text piece by piece, then its
    ``.answer`` (lazy: nothing runs until the first piece is asked for)."""
    checked, turns = check_sampling(sampling), check_history(history)
    return AnswerStream(
        generator,
        lambda: begin_from_chunks(
            generator, query, chunks, max_new_tokens, assembly=assembly, sampling=checked, history=turns
        ),
        checked.stop,
    )


def chunk_sizes(chunks: Sequence[KVChunk]) -> dict[str, int]:
    """``chunks``, ``chunk_tokens`` (context tokens kept) and ``chunk_tokens_full`` (before any
    press evicted some) of a request's chunks."""
    kept, full = sum(c.num_tokens for c in chunks), sum(c.length for c in chunks)
    return {"chunks": len(chunks), "chunk_tokens": kept, "chunk_tokens_full": full}


def chunk_answer(
    generator: Generator,
    tokens: Sequence[int],
    prompt_tokens: int,
    position: int,
    chunks: Sequence[KVChunk],
    start: float,
    ttft_ms: float | None,
    extra: dict[str, Any] | None = None,
    stop: Sequence[str] = (),
) -> Answer:
    """The :class:`~ragcompress.generate.Answer` of a KV-path request, whatever engine decoded
    ``tokens``: ``position`` is where the question started, ``start`` the request's
    ``perf_counter()``; ``stats.extra`` gets ``chunks``, ``chunk_tokens`` (kept context tokens),
    ``chunk_tokens_full`` (the chunks' tokens before any press evicted some) and ``ttft_ms``;
    the text ends before the first ``stop`` string."""
    ttft = (time.perf_counter() - start) * 1e3 if ttft_ms is None else ttft_ms
    info = {**chunk_sizes(chunks), **(extra or {})}
    info.setdefault("ttft_ms", ttft)
    return generator.answer_of(tokens, prompt_tokens, position + prompt_tokens, start, ttft, info, stop)
