"""``create_kv_documents_chain``: LangChain's ``create_stuff_documents_chain`` for the KV path.

``create_stuff_documents_chain`` joins the documents into the prompt text, where a chat model
can only read them as one flat string. This chain takes the same inputs (a dict holding the
documents under ``document_variable_name`` plus the prompt's variables) and hands the documents
to :class:`~langchain_ragcompress.chat.ChatRagCompress` as a list (``documents=``), one KV chunk
each, in order; the prompt's ``{context}`` placeholder, if it has one, is filled with an empty
string. It drops into ``create_retrieval_chain(retriever, create_kv_documents_chain(llm, prompt))``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import BaseOutputParser, StrOutputParser
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

from langchain_ragcompress.chat import ChatRagCompress

__all__ = ["create_kv_documents_chain"]


def create_kv_documents_chain(
    llm: ChatRagCompress,
    prompt: BasePromptTemplate,
    *,
    output_parser: BaseOutputParser[Any] | None = None,
    document_variable_name: str = "context",
) -> Runnable[dict[str, Any], Any]:
    """A chain ``{document_variable_name: [Document, ...], **prompt variables} -> answer``
    (a ``str`` unless ``output_parser`` says otherwise) that answers on the KV path.

    Streams like ``prompt | llm | parser``; a missing or non-list documents entry is a
    ``TypeError`` naming ``document_variable_name``.
    """
    if not isinstance(llm, ChatRagCompress):
        raise TypeError(f"llm must be a ChatRagCompress, got {type(llm).__name__}")
    parser = output_parser if output_parser is not None else StrOutputParser()
    in_prompt = document_variable_name in prompt.input_variables

    def route(inputs: dict[str, Any]) -> Runnable[Any, Any]:
        if not isinstance(inputs, dict) or document_variable_name not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise TypeError(f"the KV documents chain takes a dict with {document_variable_name!r}, got {got}")
        documents = inputs[document_variable_name]
        if isinstance(documents, Document | str) or not isinstance(documents, list | tuple):
            raise TypeError(
                f"{document_variable_name!r} must be a list of Documents, got {type(documents).__name__}"
            )
        values = {**inputs, document_variable_name: ""} if in_prompt else inputs
        # RunnableLambda invokes (and streams) the runnable a function returns.
        fill: Runnable[Any, Any] = RunnableLambda(lambda _: values, name="format_inputs")
        return fill | prompt | llm.bind(documents=list(documents)) | parser

    return RunnableLambda(route, name="kv_documents_chain")
