from __future__ import annotations

import json

import pytest

from ragcompress.corpus import DocumentError, load_documents, load_passages, load_questions


def test_bundled_corpus_is_consistent():
    passages = load_passages()
    questions = load_questions()
    ids = [p.id for p in passages]
    assert 30 <= len(passages) <= 60 and len(set(ids)) == len(ids)
    assert len(questions) >= 8
    by_id = {p.id: p for p in passages}
    titles = {p.metadata["title"] for p in passages}
    assert len(titles) >= 3  # several topics, so retrieval has to choose
    for q in questions:
        # the gold answer span occurs verbatim in the passage it points to
        assert q.answer in by_id[q.passage_id].text, q.id
        assert q.question.endswith("?")


def test_bundled_text_is_detokenized():
    text = " ".join(p.text for p in load_passages())
    assert " ' s " not in text and " , " not in text and "( " not in text


def test_load_documents_folder(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph.\n\nSecond paragraph.\n", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.md").write_text("# Title\n\nBody text.", encoding="utf-8")
    (sub / "c.jsonl").write_text(
        json.dumps({"id": "x1", "text": "from jsonl", "lang": "en"}) + "\n\n", encoding="utf-8"
    )
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    docs = load_documents(tmp_path)
    assert [d.id for d in docs] == ["a.txt#0", "a.txt#1", "sub/b.md#0", "x1"]
    assert docs[2].text == "# Title\n\nBody text."  # the heading stays with its section
    assert docs[-1].metadata == {"lang": "en", "source": "sub/c.jsonl"}
    assert docs[0].metadata["source"] == "a.txt"


def test_load_documents_accepts_the_bundled_corpus_file():
    from importlib.resources import files

    docs = load_documents(str(files("ragcompress") / "data" / "demo_corpus.jsonl"))
    assert [d.id for d in docs] == [p.id for p in load_passages()]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.jsonl", b'{"text": "ok"}\n{not json\n', r"bad\.jsonl:2: not valid JSON"),
        ("notext.jsonl", b'{"body": "x"}\n', r"notext\.jsonl:1: no text"),
        ("list.jsonl", b"[1, 2]\n", r"list\.jsonl:1: each line must be a JSON object"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), r"latin1\.txt.*not valid UTF-8"),
        ("doc.pdf", b"%PDF", r"unsupported file type"),
        ("empty.txt", b"\n\n  \n", r"holds no text"),
    ],
)
def test_load_documents_bad_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=match):
        load_documents(path)


def test_load_documents_missing_and_empty(tmp_path):
    with pytest.raises(DocumentError, match="does not exist"):
        load_documents(tmp_path / "nope")
    with pytest.raises(DocumentError, match=r"holds no \.txt, \.md, \.jsonl files"):
        load_documents(tmp_path)
