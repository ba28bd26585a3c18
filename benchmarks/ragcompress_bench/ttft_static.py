"""The strongest plain-transformers anchor of ``ragcompress bench ttft``: a ``StaticCache``
holding the context, the question prefilled against it by a compiled forward.

This is what a user fluent in transformers would do instead of caching chunks: prefill the
context once into a :class:`transformers.StaticCache` (fixed shapes, tensors updated in place),
then prefill only the question against it with the model's forward compiled by
``torch.compile(mode="reduce-overhead")`` (Inductor kernels replayed from CUDA graphs). The
context prefill is not timed (it is the reuse the anchor stands for); the compile is timed on its
own (``hf_static_compile_s``: the first calls, which trace, compile and record the graphs), and
``hf_static_ms`` is the median time of a question prefill to its first token on the
host afterwards. Every timed call writes the question's K/V at the same slots after the context
(where the static layers count their tokens themselves, that count is reset first, in one launch),
so the context stays as prefilled.

``compile``: ``"reduce-overhead"`` (the anchor, on CUDA), ``"eager"`` (TorchDynamo tracing with
no code generation: a CPU-safe check of the wiring) or ``"none"`` (the forward as is; what a CPU
smoke run uses, since Inductor on CPU needs a C++ toolchain and minutes).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from ragcompress.models.compat import cache_kwargs

__all__ = ["COMPILE_CHOICES", "static_cache_row"]

COMPILE_CHOICES = ("reduce-overhead", "eager", "none")


def _compiled(model: Any, compile: str) -> Callable[..., Any]:
    import torch

    if compile == "none":
        return model  # type: ignore[no-any-return]
    if compile == "eager":
        return torch.compile(model, backend="eager")  # type: ignore[no-any-return]
    if compile == "reduce-overhead":
        return torch.compile(model, mode="reduce-overhead")  # type: ignore[no-any-return]
    raise ValueError(f"compile must be one of {list(COMPILE_CHOICES)}, got {compile!r}")


def _rewinder(cache: Any, ctx: int) -> Callable[[], None]:
    """What puts ``cache`` back to its state after the context prefill, before each question.

    Newer transformers' static layers count the tokens written so far themselves and ignore
    ``cache_position``: that count goes back to the context's end (one foreach launch), so every
    call writes the question at the same slots. Sliding-window layers (Gemma 3's local ones)
    roll their window in place as tokens come: their keys/values are restored from a copy taken
    after the context prefill (one more foreach copy, inside the timed call)."""
    import torch

    counts = [c for c in (getattr(x, "cumulative_length", None) for x in cache.layers) if c is not None]
    ends = [torch.full_like(c, ctx) for c in counts]
    sliding = [x for x in cache.layers if getattr(x, "is_sliding", False) and x.keys is not None]
    live = [t for x in sliding for t in (x.keys, x.values)]
    saved = [t.clone() for t in live]
    host = [(x, x.cumulative_length_int) for x in sliding if hasattr(x, "cumulative_length_int")]

    def rewind() -> None:
        if counts:
            torch._foreach_copy_(counts, ends)
        if live:
            torch._foreach_copy_(live, saved)
        for layer, n in host:
            layer.cumulative_length_int = n

    return rewind


def static_cache_row(
    model: Any, ids: Any, question: list[int], clock: Any, compile: str, warmup_calls: int = 3
) -> dict[str, Any]:
    """``{"hf_static_ms", "hf_static_compile_s", "hf_static_first_token"}`` (or
    ``hf_static_error``): ``ids`` (ctx,) the context's token ids, prefilled once into a
    ``StaticCache`` of ``ctx + len(question)`` slots; ``question`` prefilled against it by the
    forward compiled as ``compile`` says (:data:`COMPILE_CHOICES`); ``clock`` times a callable
    (median ms). ``warmup_calls`` first calls make up the compile time (with
    ``mode="reduce-overhead"`` the first traces and compiles, the next ones record the graph)."""
    import torch
    from transformers import StaticCache

    dev = model.device
    ctx, n = int(ids.numel()), len(question)
    row: dict[str, Any] = {"hf_static_compile": compile}
    try:
        # no_grad rather than inference_mode: the cache is updated in place by the compiled
        # forward, and inference tensors cannot be updated outside inference mode
        with torch.no_grad():
            cache = StaticCache(config=model.config, max_cache_len=ctx + n)
            model(
                input_ids=ids[None].to(dev),
                position_ids=torch.arange(ctx, device=dev)[None],
                cache_position=torch.arange(ctx, device=dev),
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(model, cache),
            )
            step = _compiled(model, compile)
            qids = torch.tensor([question], device=dev)
            qpos = torch.arange(ctx, ctx + n, device=dev)
            rewind = _rewinder(cache, ctx)

            def run() -> int:
                rewind()
                out = step(
                    input_ids=qids,
                    position_ids=qpos[None],
                    cache_position=qpos,
                    use_cache=True,
                    logits_to_keep=1,
                    **cache_kwargs(model, cache),
                )
                return int(out.logits[0, -1].argmax())

            t0 = time.perf_counter()
            for _ in range(warmup_calls):
                run()
            row["hf_static_compile_s"] = round(time.perf_counter() - t0, 2) if compile != "none" else None
            row["hf_static_ms"] = round(clock(run, warmup=1), 3)
            row["hf_static_first_token"] = run()
    except Exception as exc:  # the anchor failing must not lose the other columns
        traceback.print_exc()
        row["hf_static_ms"] = None
        row["hf_static_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row
