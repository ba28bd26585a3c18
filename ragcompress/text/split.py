"""Sentence splitting that keeps every character.

:func:`split_sentences` returns segments that partition the text: each segment is the
whitespace before a sentence plus the sentence itself (the first one also holds any leading
whitespace, the last one the trailing whitespace). Joining any subset of segments in order
therefore reads naturally, and joining all of them gives the text back unchanged. Attaching
whitespace *before* a sentence mirrors byte-level BPE, which merges a space into the word
after it, so per-segment token counts add up to (almost exactly) the count of the join.

Everything is one regex pass plus constant work per candidate boundary: linear in the text.
Sentences longer than ``max_pieces`` word pieces of an embedder are cut further, at clause
boundaries where possible and in hard windows otherwise, so no embedder ever truncates one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["Span", "join_segments", "segment_texts", "split_sentences"]

Span = tuple[int, int]  # [start, end) character offsets into the text

# Candidate sentence ends: terminal punctuation (with closing quotes/brackets) followed by
# whitespace, or a blank line (a paragraph break ends a sentence even without punctuation).
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n[ \t]*\n")
_NEXT_WORD = re.compile(r"\s+(\S)")
_LAST_WORD = re.compile(r"(\S+)$")
# Words ending in a period that rarely end a sentence (lower-cased, without the period).
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "fig",
        "figs",
        "no",
        "nos",
        "vol",
        "vols",
        "pp",
        "ed",
        "eds",
        "approx",
        "dept",
        "est",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "rev",
        "hon",
        "gov",
        "pres",
        "sen",
        "rep",
        "u.s",
        "u.k",
        "u.n",
        "a.m",
        "p.m",
        "ph.d",
        "b.a",
        "m.a",
        "b.sc",
        "m.sc",
    ]
)
# Clause boundaries used to cut over-long sentences: after , ; : or a dash between spaces.
_CLAUSE = re.compile(r"[,;:](?=\s)|\s[-–—]\s")
_LOOKBACK = 40  # chars scanned before a candidate period for the abbreviation check


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the period at ``text[dot]`` belongs to an abbreviation or an initial."""
    m = _LAST_WORD.search(text, max(0, dot - _LOOKBACK), dot)
    if m is None:
        return False
    word = m.group(1).lstrip("([\"'“‘").lower()
    if len(word) == 1 and word.isalpha():  # an initial: "J. Smith"
        return True
    return word in _ABBREVIATIONS


def _sentence_ends(text: str) -> list[int]:
    ends: list[int] = []
    for m in _BOUNDARY.finditer(text):
        if m.group().startswith("\n"):
            ends.append(m.start())
            continue
        nxt = _NEXT_WORD.match(text, m.end())
        if nxt is None:  # only whitespace follows: the text's last sentence
            continue
        first = nxt.group(1)
        if first.islower():  # "approx. five", "e.g. this": not a new sentence
            continue
        if (
            m.group()[0] == "."
            and len(m.group().rstrip("\"'”’)]")) == 1
            and _is_abbreviation(text, m.start())
        ):
            continue
        ends.append(m.end())
    return ends


def _segments(text: str, ends: Sequence[int]) -> list[Span]:
    """Spans ``[start, end)`` that cover ``text`` with each cut placed at the start of the
    whitespace before the next sentence; whitespace-only pieces merge into their neighbour."""
    spans: list[Span] = []
    start = 0
    for end in ends:
        if end <= start or not text[start:end].strip():
            continue
        spans.append((start, end))
        start = end
    if start < len(text):
        if spans and not text[start:].strip():
            spans[-1] = (spans[-1][0], len(text))
        elif text[start:].strip():
            spans.append((start, len(text)))
    return spans


def _cut_long(
    text: str, span: Span, max_pieces: int, offsets: Callable[[str], list[tuple[int, int]]]
) -> list[Span]:
    """Cut one over-long span into pieces of at most ``max_pieces`` embedder tokens.

    ``offsets(s)`` gives the character span of each word piece of ``s``. A cut goes at the
    last clause boundary inside the window, else at the last whitespace, else between pieces.
    """
    start, end = span
    piece_spans = offsets(text[start:end])
    if len(piece_spans) <= max_pieces:
        return [span]
    out: list[Span] = []
    cut = start
    i = 0  # index of the first piece not yet placed in an output span
    n = len(piece_spans)
    while n - i > max_pieces:
        limit = start + piece_spans[i + max_pieces][0]  # the window may not reach this char
        window = text[cut:limit]
        best = -1
        for m in _CLAUSE.finditer(window):
            best = m.start() + (1 if m.group()[0] in ",;:" else 0)
        if best <= 0:
            ws = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            best = ws
        new_cut = cut + best if best > 0 else limit
        out.append((cut, new_cut))
        cut = new_cut
        while i < n and start + piece_spans[i][0] < cut:
            i += 1
    out.append((cut, end))
    return [s for s in out if text[s[0] : s[1]].strip()] or [span]


def split_sentences(
    text: str,
    max_pieces: int | None = None,
    offsets: Callable[[str], list[tuple[int, int]]] | None = None,
) -> list[Span]:
    """Segments of ``text`` (see the module docstring); ``[]`` for blank text.

    With ``max_pieces`` and ``offsets`` (a function giving the character span of each word
    piece of a string under the embedder's tokenizer), longer sentences are cut further.
    """
    if not text.strip():
        return []
    spans = _segments(text, _sentence_ends(text))
    if max_pieces is None or offsets is None:
        return spans
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
    out: list[Span] = []
    for span in spans:
        # A word piece covers at least one character, so short spans cannot be too long:
        # skip the tokenizer for them (this keeps a 1M-character text cheap).
        if span[1] - span[0] <= max_pieces:
            out.append(span)
        else:
            out.extend(_cut_long(text, span, max_pieces, offsets))
    return out


def segment_texts(text: str, spans: Sequence[Span]) -> list[str]:
    return [text[a:b] for a, b in spans]


def join_segments(segments: Sequence[str]) -> str:
    """Kept segments joined back into a passage (outer whitespace removed)."""
    return "".join(segments).strip()
