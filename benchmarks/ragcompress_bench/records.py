"""For the diagnostic scripts under ``results/``: another record's script, or a module of the
tree before a change, loaded as a module of its own (an A/B beside the library's); and the
table of context-pass contenders those scripts print."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "contender_rows", "record_module", "shape_rows"]

#: benchmarks/results/, where each record's scripts live
RESULTS = Path(__file__).resolve().parents[1] / "results"


def record_module(name: str, path: Path, replace: tuple[str, str] | None = None) -> types.ModuleType:
    """``path`` executed as module ``name`` (registered in ``sys.modules``, so Triton finds its
    jit functions' source and dataclasses their module). ``replace``: ``(old, new)``
    substituted in the source first (e.g. an import redirected to another "before" module)."""
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod
    text = path.read_text()
    exec(compile(text if replace is None else text.replace(*replace), str(path), "exec"), mod.__dict__)
    return mod


def contender_rows(
    label: str,
    contenders: dict[str, Callable[[], tuple[Any, Any, int]]],
    merged: Callable[[Any, Any, int], Any],
    rounds: int = 3,
) -> dict[str, float]:
    """Print one table row per contender of a context-pass A/B: µs (``do_bench_cudagraph``, the
    best of ``rounds`` alternating rounds), against the first contender's time, and the relative
    error of its merged output (``merged(o, lse, splits)``) against the first's. Each contender
    returns ``(o, lse, splits)``; one that fails (out of resources, say) gets a row saying so.
    ``label``: the row's first cells (``shape | keys``). Returns each contender's best µs (those
    that ran)."""
    import torch
    from triton.testing import do_bench_cudagraph

    names = list(contenders)
    ref = merged(*contenders[names[0]]()).float()
    best = dict.fromkeys(names, float("inf"))
    errs: dict[str, float] = {}
    for name, fn in contenders.items():
        try:
            got = merged(*fn()).float()
            torch.cuda.synchronize()
            errs[name] = float((got - ref).norm() / ref.norm())
        except Exception as exc:
            print(f"| {label} | {name} | failed: {type(exc).__name__} {str(exc)[:200]} | | |", flush=True)
            del best[name]
    for _ in range(rounds):
        for name in best:
            best[name] = min(best[name], do_bench_cudagraph(contenders[name]) * 1e3)
    for name, us in best.items():
        print(f"| {label} | {name} | {us:.1f} | {us / best[names[0]]:.3f} | {errs[name]:.1e} |", flush=True)
    return best


def shape_rows(
    tiles: types.ModuleType,
    contexts: Iterable[int],
    contenders: dict[str, Callable[[dict[str, Any], int], tuple[Any, Any, int]]],
) -> dict[tuple[str, int], dict[str, float]]:
    """:func:`contender_rows` at each context for each of ``tiles.SHAPES`` (``tiles``: the
    ``ttft_paged_tiles_h200/paged_tiles.py`` record, whose ``case`` builds one layer's queries,
    pool and tables for 32 question tokens, and whose ``merged`` merges a pass's partials), on
    the GPU in bf16. Each contender is called as ``fn(case, sms)``. Returns each row group's
    best µs by ``(shape, context)``."""
    import torch

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    best: dict[tuple[str, int], dict[str, float]] = {}
    for ctx in contexts:
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = tiles.case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16)
            runs: dict[str, Callable[[], tuple[Any, Any, int]]] = {
                name: partial(fn, c, sms) for name, fn in contenders.items()
            }

            def merged(o: Any, lse: Any, sp: int, h: int = h, kvh: int = kvh, d: int = d) -> Any:
                return tiles.merged(o, lse, sp, 32, h, kvh, d)

            best[(shape, ctx)] = contender_rows(f"{shape} | {ctx}", runs, merged)
            del c, runs
            torch.cuda.empty_cache()
    return best
