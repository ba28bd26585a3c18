"""demos/langchain_qa.py end to end with the packaged reader (slow: loads SmolLM2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from langchain_ragcompress import STATS_KEY, RagCompressDocumentCompressor

from ragcompress.corpus import load_passages, load_questions
from ragcompress.generate import Generator

DEMO = Path(__file__).resolve().parents[3] / "demos" / "langchain_qa.py"


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("langchain_qa_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _demo().main(["--help"])
    assert exit_info.value.code == 0
    assert "--question" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_answers_from_compressed_documents(capsys: pytest.CaptureFixture[str]) -> None:
    demo = _demo()
    question = load_questions()[0]
    corpus = {p.id: p for p in load_passages()}
    generator = Generator(max_new_tokens=12)
    chain = demo.build_chain(
        RagCompressDocumentCompressor(compressor={"name": "sentences", "ratio": 0.5}), generator, 4
    )
    out = chain.invoke(question.question)
    docs, answer = out["documents"], out["answer"]
    assert docs and answer.text.strip()
    assert all(d.metadata["title"] == corpus[d.id].metadata["title"] for d in docs)
    batch = docs[0].metadata[STATS_KEY]["batch"]
    assert batch["tokens_after"] < batch["tokens_before"]
    # The reader saw exactly the kept documents, one prompt segment each.
    expected = generator.layout.prompt_ids([d.page_content for d in docs], question.question)
    assert answer.stats.prompt_tokens == len(expected)

    assert demo.main(["--question", question.question, "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"question: {question.question}" in printed and "answer:" in printed and "tokens:" in printed
