"""Sentences that lean on the one before them, and the antecedents selection keeps with them.

A sentence that opens with a pronoun or a definite reference ("It flows 1,230 km…", "These
moons…") means little without the sentence it refers back to; an extractive method that keeps
it alone can mislead the reader ("It has two small moons." without the sentence naming Mars).
:func:`antecedent_groups` gives, for every segment, the earlier segments of its passage that
must be kept with it: the nearest earlier one that names its subject.

The rule is deliberately small: a segment leans back when its first word is in the language's
table below (case-insensitive, punctuation stripped). Languages without a table never link.
Words that also open self-contained sentences often ("There is…", "That day…") are left out:
a missed link costs what it cost before, a wrong one costs budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["REFERRING_OPENERS", "antecedent_groups", "leans_back"]


def _words(line: str) -> frozenset[str]:
    return frozenset(line.split())


#: First words that refer back to an earlier sentence, per ISO 639-1 language code.
REFERRING_OPENERS: dict[str, frozenset[str]] = {
    "en": _words(
        "it its it's they them their theirs this these those he she his her him such "
        "both either neither latter former thus hence therefore"
    ),
    "de": _words(
        "er sie es ihr ihre ihren ihrem ihrer sein seine seinen seinem seiner dieser diese dieses "
        "diesen diesem solche solcher solches beide daher deshalb"
    ),
}

_FIRST_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def leans_back(sentence: str, language: str) -> bool:
    """Whether ``sentence`` opens with a word of ``language``'s table of referring openers."""
    openers = REFERRING_OPENERS.get(language.split("-")[0].split("_")[0])
    if not openers:
        return False
    m = _FIRST_WORD.search(sentence.lstrip(" \t\n\"'“‘([—–-"))
    if m is None or m.start() != 0:
        return False
    return m.group().lower().replace("’", "'") in openers


def antecedent_groups(segments: Sequence[str], window: int, language: str) -> list[tuple[int, ...]]:
    """For each segment j, the segments to keep with it: ``(j,)`` or ``(k, j)``, ``k < j``.

    The antecedent k of a leaning segment is the nearest earlier segment that does not lean
    back itself ("Mars is…" for "It has two small moons." after "Its surface is red."): the
    sentences in between refer to it too, so they are not needed to read segment j. The search
    reaches ``window`` segments back at most (0 turns linking off); when every segment in reach
    leans back, the farthest one in reach is taken. Shape: one tuple per segment.
    """
    if window < 0:
        raise ValueError(f"referent_window must be >= 0, got {window}")
    leaning = [window > 0 and leans_back(s, language) for s in segments]
    groups: list[tuple[int, ...]] = []
    for j in range(len(segments)):
        if not leaning[j] or j == 0:
            groups.append((j,))
            continue
        k = j - 1
        while k > 0 and j - k < window and leaning[k]:
            k -= 1
        groups.append((k, j))
    return groups
