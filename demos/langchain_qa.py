"""Retrieval QA in LangChain with ragcompress: retrieve, compress, answer — offline.

An InMemoryVectorStore over the bundled SQuAD corpus (embedded with the packaged MiniLM)
feeds a ContextualCompressionRetriever whose compressor is ``RagCompressDocumentCompressor``;
an LCEL chain hands the kept documents, as documents, to the packaged reader (SmolLM2-135M
through ``ragcompress.generate.Generator``).

    python3 demos/langchain_qa.py
    python3 demos/langchain_qa.py --question "How long is the Rhine?" --compressor '{"name": "tokens"}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ragcompress import STATS_KEY, RagCompressDocumentCompressor

from ragcompress import Passage
from ragcompress.corpus import load_passages, load_questions
from ragcompress.generate import Answer, Generator

# Everything loads from local packages; never wait on a model hub. (transformers is imported
# lazily, at the first model load, so setting these after the imports is early enough.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_SPEC = '{"name": "sentences", "ratio": 0.5}'


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over ragcompress's packaged all-MiniLM-L6-v2 (offline)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ragcompress.models import load_embedder

        vectors = load_embedder().encode(list(texts), normalize_embeddings=True)
        return [[float(x) for x in v] for v in vectors]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def reader(generator: Generator) -> Runnable[dict[str, Any], Answer]:
    """A Runnable that answers ``{"question", "documents"}`` with the packaged reader.

    The documents go to the generator as passages, one prompt segment each, never as one
    pre-joined string: the reader sees exactly what the compressor kept.
    """

    def answer(inputs: dict[str, Any]) -> Answer:
        docs: list[Document] = inputs["documents"]
        passages = [Passage(text=d.page_content, id=d.id or "") for d in docs]
        return generator.generate(inputs["question"], passages)

    return RunnableLambda(answer, name="ragcompress-reader")


def build_chain(
    compressor: RagCompressDocumentCompressor, generator: Generator, k: int
) -> Runnable[str, dict[str, Any]]:
    store = InMemoryVectorStore(MiniLMEmbeddings())
    store.add_documents(
        [Document(id=p.id, page_content=p.text, metadata=dict(p.metadata)) for p in load_passages()]
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": k})
    )
    return RunnableParallel(documents=retriever, question=RunnablePassthrough()).assign(
        answer=reader(generator)
    )


def main(argv: list[str] | None = None) -> int:
    questions = load_questions()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--question", default=questions[0].question, help="question to answer")
    parser.add_argument("--compressor", default=DEFAULT_SPEC, help="ragcompress spec (JSON or a name)")
    parser.add_argument("--k", type=int, default=4, help="documents to retrieve (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default=None, help="reader: packaged alias, path or HF id")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(args.compressor)
    except json.JSONDecodeError:
        spec = args.compressor
    compressor = RagCompressDocumentCompressor(compressor=spec)
    generator = Generator(model=args.model, max_new_tokens=args.max_new_tokens)
    out = build_chain(compressor, generator, args.k).invoke(args.question)

    docs: list[Document] = out["documents"]
    answer: Answer = out["answer"]
    print(f"question: {args.question}")
    gold = next((q.answer for q in questions if q.question == args.question), None)
    print(f"answer:   {answer.text}" + (f"   (gold: {gold})" if gold else ""))
    print(f"compressor: {json.dumps(compressor.compressor.spec())}")
    if docs:
        batch = docs[0].metadata[STATS_KEY]["batch"]
        print(
            f"tokens: {batch['tokens_before']} -> {batch['tokens_after']} "
            f"({batch['passages_before']} -> {batch['passages_after']} passages); "
            f"reader prompt: {answer.stats.prompt_tokens} tokens"
        )
    else:
        print("tokens: every retrieved passage was dropped")
    for d in docs:
        s = d.metadata[STATS_KEY]
        print(f"\n[{d.id}] {s['tokens_before']} -> {s['tokens_after']} tokens\n{d.page_content}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
