"""Markdown files split into passages that keep their section's heading."""

from __future__ import annotations

from pathlib import Path

from ragcompress.corpus import load_documents, markdown_passages

REPO = Path(__file__).resolve().parents[1]

GUIDE = """\
# River guide

The guide covers two rivers.

## The Rhine

The Rhine rises in the Swiss Alps.
It flows 1,230 km to the North Sea.

Barges carry coal.

```python
# not a heading: a comment in code

print("still the same block")
```

The Danube
----------

It is 2,850 km long.

## Empty section

### Deeper
Text under deeper.

## Last heading with nothing under it
"""


def test_each_passage_starts_with_its_section_heading(tmp_path):
    path = tmp_path / "guide.md"
    path.write_text(GUIDE, encoding="utf-8")
    docs = load_documents(path)
    texts = [d.text for d in docs]
    assert texts[0] == "# River guide\n\nThe guide covers two rivers."
    assert (
        texts[1] == "## The Rhine\n\nThe Rhine rises in the Swiss Alps.\nIt flows 1,230 km to the North Sea."
    )
    assert texts[2] == "## The Rhine\n\nBarges carry coal."
    assert texts[3].startswith("## The Rhine\n\n```python\n# not a heading") and texts[3].endswith("```")
    assert texts[4] == "## The Danube\n\nIt is 2,850 km long."  # setext heading
    assert texts[5] == "### Deeper\n\nText under deeper."
    assert texts[6] == "## Last heading with nothing under it"
    assert len(docs) == 7
    assert docs[1].metadata == {"source": "guide.md", "headings": ["River guide", "The Rhine"]}
    assert docs[5].metadata["headings"] == ["River guide", "Empty section", "Deeper"]
    assert [d.id for d in docs] == [f"guide.md#{i}" for i in range(7)]


def test_no_body_text_is_lost():
    body = [b for b in GUIDE.split("\n\n") if b.strip() and not b.lstrip().startswith("#")]
    joined = "\n".join(t for t, _ in markdown_passages(GUIDE))
    for b in body:
        for line in b.strip().splitlines():
            if line.strip() and set(line.strip()) != {"-"}:
                assert line.strip() in joined, line


def test_a_real_markdown_file_keeps_headings_with_sections():
    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    passages = markdown_passages(text)
    assert len(passages) > 5
    headed = [(t, h) for t, h in passages if h]
    assert headed
    for t, h in headed:
        first = t.split("\n", 1)[0]
        assert first.startswith("#") and first.lstrip("#").strip() == h[-1]
    # no heading sits alone when its section has text
    lone = [t for t, _ in passages if "\n" not in t and t.startswith("#")]
    assert all(not any(p.startswith(f"{x}\n") for p, _ in passages) for x in lone)


def test_plain_text_files_still_split_at_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("# not a heading in .txt\n\nBody.", encoding="utf-8")
    assert [d.text for d in load_documents(path)] == ["# not a heading in .txt", "Body."]
