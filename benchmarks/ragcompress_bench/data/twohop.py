"""A two-hop QA set built from templates with invented entities: the answer needs two passages.

Each question links a person to a place in one passage (the *first hop*: "Velor Danik was born
in Brastow.") and the place to the answer in another (the *bridge*: "The Osmel River runs
through Brastow."); the question asks for the answer through the person ("Which river runs
through the town where Velor Danik was born?"). Distractors are the same kinds of passages about
other invented people, places and answers, so that neither hop can be skipped: there are other
rivers to pick, and the person is never named next to the answer. All names are syllable
combinations drawn with a fixed seed, so a reader cannot know an answer from pretraining; each
name is used once in the whole set.

This is where cross-passage attention matters most: a KV chunk encoded alone never sees the other
hop, so assembly modes that let passages attend to each other should show their gain here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ragcompress.types import Passage
from ragcompress_bench.data.example import QAExample

__all__ = ["HOPS_IN_ORDER", "HOPS_REVERSED", "TEMPLATES", "HopTemplate", "NameMaker", "twohop_examples"]

# ``metadata["subset"]``: whether the first hop's passage comes before the bridge's. Only then can
# the bridge's tokens attend to the first hop in a full prefill (causal attention), so only then can
# cross-passage attention, which independently encoded chunks lack, help the answer.
HOPS_IN_ORDER = "hops-in-order"
HOPS_REVERSED = "hops-reversed"

_ONSETS = ("b", "br", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ei")
_CODAS = ("", "", "l", "n", "r", "s", "k")


@dataclass(frozen=True, slots=True)
class HopTemplate:
    """One relation chain: ``first`` puts a person at a place, ``bridge`` ties the place to the
    answer; ``filler_first`` / ``filler_bridge`` pad the passages to a realistic length without
    naming any other entity. Fields are ``str.format`` templates over person/place/answer."""

    first: str
    bridge: str
    question: str
    answer_suffix: str  # appended to the invented answer name ("River"), "" for none
    filler_first: tuple[str, ...]
    filler_bridge: tuple[str, ...]


TEMPLATES: tuple[HopTemplate, ...] = (
    HopTemplate(
        first="{person} was born in {place}.",
        bridge="The {answer} runs through {place}.",
        question="Which river runs through the town where {person} was born?",
        answer_suffix="River",
        filler_first=(
            "As a child, {person} spent long summers copying old maps by hand.",
            "{person} later trained as a clockmaker and repaired the bells of several chapels.",
            "Friends remember {person} as patient, stubborn and fond of long walks before dawn.",
        ),
        filler_bridge=(
            "The river is slow and shallow for most of the year and freezes in hard winters.",
            "Boatmen once carried wool and salt along it, and a stone bridge still crosses it.",
            "Herons nest in the reeds along its banks, and anglers fish it for pike.",
        ),
    ),
    HopTemplate(
        first="{person} opened a bakery in {place}.",
        bridge="The mayor of {place} is {answer}.",
        question="Who is the mayor of the town where {person} opened a bakery?",
        answer_suffix="",
        filler_first=(
            "The bakery is known for rye loaves baked in a wood-fired oven before sunrise.",
            "{person} learned the trade from an aunt and still kneads the dough by hand.",
            "On market days the queue reaches the corner of the square.",
        ),
        filler_bridge=(
            "The town council meets on the first Monday of every month in the old guild hall.",
            "The mayor was elected after a campaign about repairing the harbour wall.",
            "Before taking office, the mayor taught mathematics at the village school.",
        ),
    ),
)


class NameMaker:
    """Invented names from syllables, each handed out once (a seeded ``random.Random``)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                for _ in range(syllables)
            ).capitalize()
            if w not in self.used:
                self.used.add(w)
                return w

    def person(self) -> str:
        return f"{self.word(2)} {self.word(2)}"


@dataclass(frozen=True, slots=True)
class _Chain:
    person: str
    place: str
    answer: str


def _chain(t: HopTemplate, names: NameMaker) -> _Chain:
    answer = names.person() if not t.answer_suffix else f"{names.word(2)} {t.answer_suffix}"
    return _Chain(
        person=names.person(), place=names.word(2) + names.rng.choice(("holm", "wick", "ford")), answer=answer
    )


def _first(t: HopTemplate, c: _Chain, rng: random.Random) -> str:
    return " ".join(
        [
            t.first.format(person=c.person, place=c.place),
            *(s.format(person=c.person) for s in rng.sample(t.filler_first, 2)),
        ]
    )


def _bridge(t: HopTemplate, c: _Chain, rng: random.Random) -> str:
    return " ".join([t.bridge.format(place=c.place, answer=c.answer), *rng.sample(t.filler_bridge, 2)])


def twohop_examples(k: int = 5, seed: int = 0, limit: int | None = None) -> list[QAExample]:
    """``limit`` (default 40) questions, each over ``k`` passages: its two hops + ``k - 2``
    distractors (first hops and bridges of other chains of the same template), shuffled.

    The gold passage is the bridge (it holds the answer); ``metadata["hops"]`` lists both passage
    ids in the order a reader must follow them, ``metadata["subset"]`` is :data:`HOPS_IN_ORDER`
    or :data:`HOPS_REVERSED`. Deterministic for a given ``seed``.
    """
    if k < 2:
        raise ValueError(f"a two-hop question needs k >= 2 passages, got k={k}")
    rng = random.Random(seed)
    names = NameMaker(rng)
    out: list[QAExample] = []
    for i in range(40 if limit is None else limit):
        t = TEMPLATES[i % len(TEMPLATES)]
        gold = _chain(t, names)
        first = Passage(_first(t, gold, rng), id=f"twohop:{i}:first", metadata={"gold": False})
        bridge = Passage(_bridge(t, gold, rng), id=f"twohop:{i}:bridge", metadata={"gold": True})
        # distractors alternate bridge / first hop so other answers are always on offer
        others = [_chain(t, names) for _ in range((k - 1) // 2)]
        distractors = [
            Passage(
                (_bridge if j % 2 == 0 else _first)(t, others[j // 2], rng),
                id=f"twohop:{i}:d{j}",
                metadata={"gold": False},
            )
            for j in range(k - 2)
        ]
        passages = [first, bridge, *distractors]
        rng.shuffle(passages)
        in_order = passages.index(first) < passages.index(bridge)
        answers = [gold.answer] + (
            [gold.answer.removesuffix(" " + t.answer_suffix)] if t.answer_suffix else []
        )
        out.append(
            QAExample(
                question=t.question.format(person=gold.person),
                passages=passages,
                gold_passage_id=bridge.id,
                answers=answers,
                kind="extractive",
                id=f"twohop:{i}",
                metadata={
                    "hops": [first.id, bridge.id],
                    "person": gold.person,
                    "place": gold.place,
                    "subset": HOPS_IN_ORDER if in_order else HOPS_REVERSED,
                },
            )
        )
    return out
