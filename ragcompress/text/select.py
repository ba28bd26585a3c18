"""Keep the best-scoring segments of many passages within one token budget.

The extractive methods differ only in how they score segments; this module does the rest:
greedy selection by score under the budget (skipping segments that do not fit, so a long
sentence does not block shorter ones), original order, re-joining, and a final check with
the real token count of the joined text, because tokens at segment seams may merge or split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ragcompress.text.budget import BudgetError, TokenCounter
from ragcompress.text.split import join_kept
from ragcompress.types import Passage

__all__ = ["keep_best"]


def keep_best(
    passages: Sequence[Passage],
    segments: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    target: int,
    counter: TokenCounter,
    tokens_before: Sequence[int],
    *,
    unit: str = "sentence",
    excluded: Sequence[Sequence[bool]] | None = None,
    drop: Callable[[Passage, str], None] | None = None,
    excluded_reason: str = "excluded",
    groups: Sequence[Sequence[tuple[int, ...]]] | None = None,
    **extra: Any,
) -> list[Passage]:
    """Passages made of their kept segments, in input order, empty ones left out.

    ``segments[i]`` partition ``passages[i].text``; ``scores[i][j]`` ranks segment j (higher
    is kept first, ties go to the earlier segment). ``excluded[i][j]`` forces a segment out.
    ``groups[i][j]`` lists the segments of passage i kept together with segment j (its
    antecedents, see :mod:`ragcompress.text.referents`); without it each segment stands alone.
    Raises :class:`BudgetError` when no candidate segment fits ``target`` tokens.
    """
    flat: list[tuple[int, int]] = []
    for i, segs in enumerate(segments):
        for j in range(len(segs)):
            if excluded is None or not excluded[i][j]:
                flat.append((i, j))
    per_passage = [_segment_counts(counter, p.text, segs) for p, segs in zip(passages, segments, strict=True)]
    counts = [per_passage[i][j] for i, j in flat]
    if flat and sum(counts) <= target:
        kept = set(flat)
    else:
        if flat and min(counts) > target:
            raise BudgetError(
                f"a budget of {target} tokens is smaller than the shortest {unit} ({min(counts)} "
                f"tokens); raise the budget or use a finer-grained compressor such as 'tokens'"
            )
        kept = _greedy(flat, scores, per_passage, target, groups, set(flat))
    texts = _texts(segments, kept)
    after = counter.many(texts)
    # Seams can add a token or two; drop the weakest kept segments until the real count fits.
    while sum(after) > target and kept:
        worst = min(kept, key=lambda ij: (scores[ij[0]][ij[1]], -ij[0], -ij[1]))
        i = worst[0]
        kept -= {(i, j) for i2, j in kept if i2 == i and groups is not None and worst[1] in groups[i][j]}
        kept.discard(worst)
        texts[i] = _join(segments[i], kept, i)
        after[i] = counter(texts[i]) if texts[i] else 0
    out: list[Passage] = []
    for i, p in enumerate(passages):
        n_kept = sum(1 for j in range(len(segments[i])) if (i, j) in kept)
        if not texts[i]:
            if drop is not None:
                if not segments[i]:
                    reason = f"no {unit} found"
                elif excluded is not None and all(excluded[i]):
                    reason = f"every {unit} {excluded_reason}"
                else:
                    reason = f"no {unit} kept within the budget"
                drop(p, reason)
            continue
        out.append(
            p.with_text(
                texts[i],
                tokens_before=tokens_before[i],
                tokens_after=after[i],
                **{f"kept_{unit}s": n_kept, f"total_{unit}s": len(segments[i])},
                **extra,
            )
        )
    return out


def _greedy(
    flat: Sequence[tuple[int, int]],
    scores: Sequence[Sequence[float]],
    counts: Sequence[Sequence[int]],
    target: int,
    groups: Sequence[Sequence[tuple[int, ...]]] | None,
    allowed: set[tuple[int, int]],
) -> set[tuple[int, int]]:
    """Segments taken best score first, each with its group, skipping what does not fit.

    A segment's group ranks at the segment's score, ahead of lower-scoring sentences; a group
    that no longer fits is skipped whole, so a leaning sentence is not kept without its
    antecedent, with one exception: the best-ranked segment is taken alone when its group does
    not fit the budget (losing the best sentence costs more than reading it without context).
    """
    order = sorted(flat, key=lambda ij: (-scores[ij[0]][ij[1]], ij))
    kept: set[tuple[int, int]] = set()
    total = 0
    for i, j in order:
        members = [(i, k) for k in (groups[i][j] if groups is not None else (j,))]
        new = [m for m in members if m not in kept and m in allowed]
        if (i, j) in kept or len(new) < len([m for m in members if m not in kept]):
            continue  # already in, or an antecedent is excluded
        cost = sum(counts[a][b] for a, b in new)
        if total + cost > target and not kept and total + counts[i][j] <= target:
            new, cost = [(i, j)], counts[i][j]  # the best-ranked sentence is never lost for its group
        if total + cost <= target:
            kept.update(new)
            total += cost
    if not kept and groups is not None:
        return _greedy(flat, scores, counts, target, None, allowed)
    return kept


def _segment_counts(counter: TokenCounter, text: str, segs: Sequence[str]) -> list[int]:
    """Tokens of each segment, from one tokenization of the whole passage when possible.

    One pass over a 1M-character passage is much cheaper than a batch of 20k sentences, and
    the counts then add up to the passage's own count exactly (a token belongs to the segment
    where it starts; byte-level BPE starts a word's token at the space before it).
    """
    tok = counter.tok
    if len(segs) <= 1 or not getattr(tok, "is_fast", False) or "".join(segs) != text:
        return counter.many(segs)
    import numpy as np

    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    starts = np.fromiter((o[0] for o in enc["offset_mapping"]), dtype=np.int64)
    ends = np.cumsum([len(s) for s in segs])
    owner = np.searchsorted(ends, starts, side="right")
    return np.bincount(np.minimum(owner, len(segs) - 1), minlength=len(segs)).tolist()  # type: ignore[no-any-return]


def _join(segs: Sequence[str], kept: set[tuple[int, int]], i: int) -> str:
    return join_kept(segs, [j for j in range(len(segs)) if (i, j) in kept])


def _texts(segments: Sequence[Sequence[str]], kept: set[tuple[int, int]]) -> list[str]:
    return [_join(segs, kept, i) for i, segs in enumerate(segments)]
