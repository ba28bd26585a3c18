"""The same loaders over Hugging Face ``datasets`` names, for users who can reach a hub.

Rows are mapped by field names that the common QA sets use: SQuAD-style (``question``,
``context``, ``answers.text``), BoolQ-style (``question``, ``passage``, ``answer`` bool) and
PubMedQA-style (``final_decision``). Anything else fails with the fields it saw.
"""

from __future__ import annotations

from typing import Any

from ragcompress_bench.data.example import RawQA

__all__ = ["hub_rows"]


def _row(ds_name: str, n: int, r: dict[str, Any]) -> RawQA | None:
    question = r.get("question")
    passage = r.get("context", r.get("passage"))
    if isinstance(passage, dict):  # PubMedQA: {"contexts": [...]}
        passage = "\n".join(passage.get("contexts", []))
    if not isinstance(question, str) or not isinstance(passage, str):
        raise ValueError(
            f"{ds_name} row {n}: need a 'question' and a 'context'/'passage' text field, got {sorted(r)}"
        )
    sid = f"{ds_name}:{n}"
    if "answers" in r:
        answers = r["answers"]
        texts = answers.get("text", []) if isinstance(answers, dict) else list(answers)
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            return None  # unanswerable (SQuAD 2.0)
        kind = "extractive" if all(t in passage for t in texts) else "abstractive"
        return RawQA(question, passage, tuple(texts), kind, sid)
    answer = r.get("answer", r.get("final_decision"))
    if isinstance(answer, bool):
        return RawQA(question, passage, ("yes" if answer else "no",), "yesno", sid)
    if isinstance(answer, str) and answer.strip().lower() in {"yes", "no", "maybe"}:
        return RawQA(question, passage, (answer.strip().lower(),), "yesno", sid)
    if isinstance(answer, str) and answer.strip():
        kind = "extractive" if answer in passage else "abstractive"
        return RawQA(question, passage, (answer.strip(),), kind, sid)
    raise ValueError(f"{ds_name} row {n}: no 'answers'/'answer'/'final_decision' field, got {sorted(r)}")


def hub_rows(
    name: str, split: str = "validation", config: str | None = None, max_rows: int = 5000
) -> list[RawQA]:
    """Rows of an HF dataset (``name`` as ``datasets.load_dataset`` takes it)."""
    try:
        import datasets
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"loading {name!r} from the Hugging Face hub needs the `datasets` package: pip install datasets"
        ) from err
    ds = datasets.load_dataset(name, config, split=split)
    out = []
    for n, r in enumerate(ds):
        if n >= max_rows:
            break
        row = _row(name, n, dict(r))
        if row is not None:
            out.append(row)
    if not out:
        raise ValueError(f"{name} ({split}) has no answerable rows")
    return out
