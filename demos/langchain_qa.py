"""Retrieval QA in LangChain with ragcompress: retrieve, compress, answer — offline.

An InMemoryVectorStore over the bundled SQuAD corpus (embedded with the packaged MiniLM)
feeds a ContextualCompressionRetriever whose compressor is ``RagCompressDocumentCompressor``;
an LCEL chain hands the kept documents, as documents, to the packaged reader (SmolLM2-135M
through ``ragcompress.generate.Generator``).

    python3 demos/langchain_qa.py
    python3 demos/langchain_qa.py --question "How long is the Rhine?" --compressor '{"name": "tokens"}'
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ragcompress import STATS_KEY, RagCompressDocumentCompressor

from ragcompress import Passage
from ragcompress.corpus import load_passages
from ragcompress.generate import Answer, Generator

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _common, also when loaded by path
from _common import Shown, embed, parse_args, report


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over ragcompress's packaged all-MiniLM-L6-v2 (offline)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return embed(texts)

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
    args = parse_args(__doc__ or "", argv, "documents")
    compressor = RagCompressDocumentCompressor(compressor=args.spec)
    generator = Generator(model=args.model, max_new_tokens=args.max_new_tokens)
    out = build_chain(compressor, generator, args.k).invoke(args.question)

    docs: list[Document] = out["documents"]
    answer: Answer = out["answer"]
    kept = [Shown(d.id or "", d.metadata[STATS_KEY], d.page_content) for d in docs]
    note = f"reader prompt: {answer.stats.prompt_tokens} tokens"
    report(args.question, answer.text, compressor.compressor.spec(), kept, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
