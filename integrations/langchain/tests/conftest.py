"""Fixtures for the LangChain integration tests: a real ``Embeddings`` over the packaged MiniLM,
an in-memory vector store over a small corpus, and the compressor under test."""

from __future__ import annotations

import os

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

# No model hub here: the packaged models load from local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Multi-sentence passages so that sentence selection has something to drop in each.
CORPUS = [
    (
        "eiffel",
        "Paris",
        "The Eiffel Tower was built for the 1889 World's Fair in Paris. It was designed by "
        "the engineering company of Gustave Eiffel. The tower is 330 metres tall. Many critics disliked "
        "it at first. Today it is the most visited paid monument in the world.",
    ),
    (
        "louvre",
        "Paris",
        "The Louvre is the world's largest art museum. It is located on the Right Bank of the "
        "Seine. The museum opened in 1793 during the French Revolution. It houses the Mona Lisa. About nine "
        "million people visit it every year.",
    ),
    (
        "seine",
        "Paris",
        "The Seine is a river in northern France. It flows through Paris into the English "
        "Channel. The river is 777 kilometres long. Barges carry cargo along it. Many bridges cross it "
        "in Paris.",
    ),
    (
        "thames",
        "London",
        "The Thames is the longest river entirely in England. It flows through London to the "
        "North Sea. Tower Bridge crosses it near the Tower of London. The river was once badly polluted. "
        "Seals have returned to its estuary.",
    ),
    (
        "bigben",
        "London",
        "Big Ben is the nickname of the great bell in the clock tower at Westminster. The "
        "tower was completed in 1859. It stands at the north end of the Houses of Parliament. The clock is "
        "famous for its reliability. The tower was renamed Elizabeth Tower in 2012.",
    ),
    (
        "volcano",
        "Geology",
        "A volcano is a rupture in the crust of a planet. Hot lava, ash and gases escape "
        "through it. Most volcanoes are found where tectonic plates meet. Iceland has many active volcanoes. "
        "Eruptions can change the climate for years.",
    ),
]


class MiniLMEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over the packaged all-MiniLM-L6-v2 (normalized vectors)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ragcompress.models.load import load_embedder

        vectors = load_embedder(device="cpu").encode(list(texts), normalize_embeddings=True)
        return [[float(x) for x in v] for v in vectors]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.fixture(scope="session")
def embeddings() -> MiniLMEmbeddings:
    return MiniLMEmbeddings()


@pytest.fixture()
def documents() -> list[Document]:
    return [
        Document(
            id=doc_id,
            page_content=text,
            metadata={"source": f"{doc_id}.txt", "topic": topic, "relevance_score": 1.0 - 0.1 * i},
        )
        for i, (doc_id, topic, text) in enumerate(CORPUS)
    ]


@pytest.fixture(scope="session")
def vector_store(embeddings: MiniLMEmbeddings) -> InMemoryVectorStore:
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_documents([Document(id=d, page_content=t, metadata={"topic": topic}) for d, topic, t in CORPUS])
    return store
