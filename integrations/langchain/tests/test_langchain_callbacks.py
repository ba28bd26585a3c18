"""Compression shows in LangChain traces: the compressor runs as a child run of its caller."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ragcompress import RagCompressDocumentCompressor

QUERY = "How tall is the Eiffel Tower and when was it built?"
NAME = "ragcompress.compress"


class Recorder(BaseCallbackHandler):
    """Every run start/end/error the callback manager reports, with its parent."""

    def __init__(self) -> None:
        self.starts: dict[UUID, tuple[str, UUID | None, Any]] = {}
        self.ends: dict[UUID, Any] = {}
        self.errors: dict[UUID, BaseException] = {}
        self.retriever_runs: set[UUID] = set()

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.starts[run_id] = (kw.get("name") or "", kw.get("parent_run_id"), inputs)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.ends[run_id] = outputs

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.errors[run_id] = error

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, **kw: Any) -> None:
        self.retriever_runs.add(run_id)

    def runs(self, name: str) -> list[UUID]:
        return [run for run, (n, _, _) in self.starts.items() if n == name]


def test_retriever_trace_holds_the_compression(vector_store: InMemoryVectorStore) -> None:
    retriever = ContextualCompressionRetriever(
        base_compressor=RagCompressDocumentCompressor(compressor={"name": "sentences", "ratio": 0.5}),
        base_retriever=vector_store.as_retriever(search_kwargs={"k": 3}),
    )
    for run in (
        lambda cb: retriever.invoke(QUERY, {"callbacks": [cb]}),
        lambda cb: asyncio.run(retriever.ainvoke(QUERY, {"callbacks": [cb]})),
    ):
        rec = Recorder()
        docs = run(rec)
        (run_id,) = rec.runs(NAME)
        _, parent, inputs = rec.starts[run_id]
        # A child of the compression retriever's own run (not the inner vector-store retriever).
        assert parent in rec.retriever_runs
        assert inputs["query"] == QUERY and len(inputs["documents"]) == 3
        out = rec.ends[run_id]
        assert [d.id for d in out["documents"]] == [d.id for d in docs]
        assert out["stats"]["tokens_after"] < out["stats"]["tokens_before"]


def test_runnable_step_and_errors_are_traced(documents: list[Document]) -> None:
    comp = RagCompressDocumentCompressor(compressor={"name": "sentences", "ratio": 0.5})
    rec = Recorder()
    kept = comp.as_runnable().invoke({"documents": documents[:2], "query": QUERY}, {"callbacks": [rec]})
    (run_id,) = rec.runs(NAME)
    parent = rec.starts[run_id][1]
    assert parent is not None and rec.starts[parent][0] == "RagCompressDocumentCompressor", "under the step"
    assert rec.ends[run_id]["documents"] == kept and kept

    rec = Recorder()
    with pytest.raises(TypeError, match="document #1"):
        comp.compress_documents([documents[0], "not a document"], QUERY, callbacks=[rec])  # type: ignore[list-item]
    (run_id,) = rec.runs(NAME)
    assert isinstance(rec.errors[run_id], TypeError) and run_id not in rec.ends
