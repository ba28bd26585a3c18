"""Sentence splitting that keeps every character.

:func:`split_sentences` returns segments that partition the text: each segment is the
whitespace before a sentence plus the sentence itself (the first one also holds any leading
whitespace, the last one the trailing whitespace). Joining any subset of segments in order
therefore reads naturally, and joining all of them gives the text back unchanged. Attaching
whitespace *before* a sentence mirrors byte-level BPE, which merges a space into the word
after it, so per-segment token counts add up to (almost exactly) the count of the join.

Sentence boundaries come from sentencex (Wikimedia's multilingual segmenter, compiled: it
knows abbreviations, ordinals and the sentence marks of ~250 languages, CJK and Devanagari
included). Sentences longer than ``max_pieces`` word pieces of an embedder are cut further, at clause
boundaries where possible and in hard windows otherwise, so no embedder ever truncates one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

__all__ = [
    "DEFAULT_LANGUAGE",
    "Span",
    "check_language",
    "join_kept",
    "join_segments",
    "segment_texts",
    "split_sentences",
]

Span = tuple[int, int]  # [start, end) character offsets into the text

# Clause boundaries used to cut over-long sentences: after , ; : or a dash between spaces.
_CLAUSE = re.compile(r"[,;:](?=\s)|\s[-–—]\s")
DEFAULT_LANGUAGE = "en"
_NEXT_WORD = re.compile(r"\s+(\S)")


def _sentence_ends(text: str, language: str) -> list[int]:
    """End offsets of the sentences found by sentencex, each before the whitespace after it.

    sentencex returns boundaries whose pieces carry the whitespace *after* a sentence (and
    paragraph breaks as pieces of their own); :func:`_segments` moves that whitespace onto the
    next sentence, so only the end of each sentence's visible text is kept here. A boundary
    followed by a lower-case word on the same paragraph is dropped: in scripts with case a
    sentence never starts in lower case, and these are abbreviations sentencex does not know
    ("approx. five", "ca. zehn").
    """
    from sentencex import get_sentence_boundaries

    ends: list[int] = []
    for b in get_sentence_boundaries(language, text):
        piece: str = b["text"]
        end = int(b["start_index"]) + len(piece.rstrip())
        nxt = _NEXT_WORD.match(text, end)
        if b["is_paragraph_break"] or nxt is None or not nxt.group(1).islower() or "\n\n" in nxt.group():
            ends.append(end)
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
    *,
    language: str = DEFAULT_LANGUAGE,
) -> list[Span]:
    """Segments of ``text`` (see the module docstring); ``[]`` for blank text.

    ``language`` is an ISO 639-1 code for sentencex's rules (abbreviations, ordinals, sentence
    marks); a code it has no rules for falls back to its generic ones. With ``max_pieces`` and
    ``offsets`` (a function giving the character span of each word piece of a string under the
    embedder's tokenizer), longer sentences are cut further.
    """
    check_language(language)
    if not text.strip():
        return []
    spans = _segments(text, _sentence_ends(text, language))
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


def check_language(language: str) -> None:
    """Raise a clear error for a value that cannot be a language code."""
    if not isinstance(language, str) or not re.fullmatch(r"[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*", language):
        raise ValueError(
            f"language must be an ISO 639 code such as 'en', 'de', 'zh', 'ja' or 'hi', got {language!r}"
        )


def segment_texts(text: str, spans: Sequence[Span]) -> list[str]:
    return [text[a:b] for a, b in spans]


def join_segments(segments: Sequence[str]) -> str:
    """Kept segments joined back into a passage (outer whitespace removed)."""
    return "".join(segments).strip()


def _wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def join_kept(segments: Sequence[str], kept: Sequence[int]) -> str:
    """``segments[j]`` for the sorted indices ``kept``, joined back into a passage.

    Sentences that touch in the source ("…type tags.Server-based…", common in scraped text)
    need a space when the sentence between them was dropped, or "tags." and the next word
    would fuse into one; scripts written without spaces (CJK) get none.
    """
    parts: list[str] = []
    for n, j in enumerate(kept):
        seg = segments[j]
        gap = n > 0 and j != kept[n - 1] + 1
        if gap and parts[-1][-1:].strip() and seg[:1].strip() and not _wide(parts[-1][-1]):
            seg = " " + seg
        parts.append(seg)
    return join_segments(parts)
