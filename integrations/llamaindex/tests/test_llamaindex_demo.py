"""demos/llamaindex_qa.py end to end with the packaged reader (slow: loads SmolLM2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from llama_index.postprocessor.ragcompress import STATS_KEY, RagCompressNodePostprocessor

from ragcompress.corpus import load_passages, load_questions
from ragcompress.generate import Generator

DEMO = Path(__file__).resolve().parents[3] / "demos" / "llamaindex_qa.py"


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llamaindex_qa_demo", DEMO)
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
def test_demo_answers_from_compressed_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    demo = _demo()
    question = load_questions()[2]
    corpus = {p.id: p for p in load_passages()}
    generator = Generator(max_new_tokens=12)
    post = RagCompressNodePostprocessor(compressor={"name": "sentences", "ratio": 0.5})
    engine = demo.build_engine(post, generator, 4)
    response = engine.query(question.question)
    assert str(response).strip()
    nodes = response.source_nodes
    assert nodes
    for n in nodes:
        assert n.node.metadata["title"] == corpus[n.node.node_id].metadata["title"]
        assert len(n.node.get_content()) <= len(corpus[n.node.node_id].text)
    batch = nodes[0].node.metadata[STATS_KEY]["batch"]
    assert batch["tokens_after"] < batch["tokens_before"]
    # Streaming through the CustomLLM yields the same greedy answer.
    llm = demo.GeneratorLLM(generator)
    prompt = "Answer briefly: what is the capital of Poland?"
    assert "".join(r.delta or "" for r in llm.stream_complete(prompt)).strip() == llm.complete(prompt).text

    assert demo.main(["--question", question.question, "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"question: {question.question}" in printed and "answer:" in printed and "tokens:" in printed
