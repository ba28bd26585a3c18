"""Question answering over the bundled Wikipedia corpus with the Python API.

Retrieve with FAISS, keep the sentences that matter for the question, answer with the packaged
SmolLM2 reader, and show what compression saved. The same as `ragcompress demo`, spelled out.

    python3 demos/qa_demo.py            # 3 questions
    python3 demos/qa_demo.py 10         # all 10
"""

from __future__ import annotations

import sys

import ragcompress
from ragcompress.corpus import load_passages, load_questions
from ragcompress.generate import Generator
from ragcompress.retrieve import FaissRetriever


def main(n_questions: int = 3) -> None:
    retriever = FaissRetriever.from_passages(load_passages())  # MiniLM embeddings, exact cosine
    compressor = ragcompress.build({"name": "sentences", "ratio": 0.5})
    reader = Generator(max_new_tokens=32)  # packaged SmolLM2-135M-Instruct

    for q in load_questions()[:n_questions]:
        retrieved = retriever.search(q.question, k=4)
        result = compressor.compress_with_stats(retrieved, q.question)
        answer = reader.generate(q.question, result.passages)
        s = result.stats
        print(f"Q: {q.question}")
        print(f"   answer: {answer.text}")
        print(f"   gold:   {q.answer}")
        print(f"   kept {s.passages_after}/{s.passages_before} passages "
              f"({', '.join(p.id for p in result.passages)}), "
              f"{s.tokens_before} -> {s.tokens_after} tokens ({s.ratio:.2f}x), "
              f"first token after {answer.stats.ttft_ms:.0f} ms\n")  # fmt: skip

    # The same thing as one object, from the ready spec ragcompress/pipeline/specs/text-only.yaml:
    from ragcompress.pipeline.core import Pipeline

    pipe = Pipeline.from_yaml("text-only", generator=reader)
    pipe.retriever = retriever
    res = pipe.run(load_questions()[-1].question)
    print("Pipeline:", res.question, "->", res.answer, f"({res.compression.ratio:.2f}x)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
