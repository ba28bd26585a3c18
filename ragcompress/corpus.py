"""The bundled demo corpus (SQuAD 2.0 passages on five Wikipedia articles) and document loaders
for user files (.txt / .md / .jsonl), shared by the CLI, the demos and the tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ragcompress.types import Passage

__all__ = [
    "DocumentError",
    "Question",
    "load_documents",
    "load_passages",
    "load_questions",
    "markdown_passages",
]

DOC_SUFFIXES = (".txt", ".md", ".jsonl")
# Keys a JSONL record may carry its text under, in order of preference.
_TEXT_KEYS = ("text", "page_content", "content", "passage", "context")


# CommonMark's ATX headings, setext underlines and code fences (up to 3 spaces of indent).
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


class DocumentError(ValueError):
    """A documents file or folder cannot be read into passages; the message names the item."""


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    question: str
    answer: str  # SQuAD's gold answer span
    passage_id: str  # id of the bundled passage that holds the answer


def _data_file(name: str) -> Path:
    return Path(str(files("ragcompress") / "data" / name))


def load_passages() -> list[Passage]:
    """The 45 bundled passages, with ``metadata = {"title": <article>}``."""
    return _read_jsonl(_data_file("demo_corpus.jsonl"))


def load_questions() -> list[Question]:
    """The 10 bundled questions with their gold answers, in file order."""
    out = []
    for line in _data_file("demo_questions.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out.append(Question(rec["id"], rec["question"], rec["answer"], rec["passage_id"]))
    return out


def load_documents(path: str | Path) -> list[Passage]:
    """Passages from a file or a folder (recursively) of .txt, .md and .jsonl files.

    A .txt file is split into passages at blank lines; a .md file likewise, but a heading starts
    a new section and every passage cut from a section begins with its heading line, with the
    heading path under ``metadata["headings"]`` (see :func:`markdown_passages`). A passage's id
    is ``<relative path>#<n>`` and its metadata records the source. A .jsonl file holds one record
    per line with the text under ``text`` (or ``page_content``, ``content``, ``passage``,
    ``context``) and optional ``id``; other keys become metadata.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DocumentError(f"documents path {str(root)!r} does not exist")
    if root.is_file():
        if root.suffix.lower() not in DOC_SUFFIXES:
            raise DocumentError(f"{str(root)!r}: unsupported file type; use {', '.join(DOC_SUFFIXES)}")
        passages = _read_file(root, root.name)
    else:
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)
        if not found:
            raise DocumentError(f"folder {str(root)!r} holds no {', '.join(DOC_SUFFIXES)} files to index")
        passages = [q for p in found for q in _read_file(p, str(p.relative_to(root)))]
    if not passages:
        raise DocumentError(f"{str(root)!r} holds no text (all files are empty)")
    return passages


def _read_file(path: Path, name: str) -> list[Passage]:
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, name)
    text = _read_text(path).replace("\r\n", "\n")
    if path.suffix.lower() == ".md":
        return [
            Passage(
                text=t, id=f"{name}#{i}", metadata={"source": name, "headings": h} if h else {"source": name}
            )
            for i, (t, h) in enumerate(markdown_passages(text))
        ]
    chunks = [c.strip() for c in text.split("\n\n")]
    return [
        Passage(text=c, id=f"{name}#{i}", metadata={"source": name})
        for i, c in enumerate(c for c in chunks if c)
    ]


def markdown_passages(text: str) -> list[tuple[str, list[str]]]:
    """``(passage text, heading path)`` pairs of a Markdown document, in order.

    A heading (ATX ``## Title`` or setext ``Title`` over ``===``/``---``) starts a section; the
    section's paragraphs (blank-line separated, fenced code blocks kept whole) each become a
    passage that begins with the heading line, so no passage is cut off from what it is about
    and no heading is a passage of its own, unless its section is empty and has no subsections.
    Headings inside fenced code are text.
    """
    out: list[tuple[str, list[str]]] = []
    path: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    heading_line: str | None = None
    emitted = True  # whether the current heading already prefixes a passage
    for block in _md_blocks(text):
        head = _md_heading(block)
        if head is None:
            prefix = f"{heading_line}\n\n" if heading_line else ""
            out.append((prefix + block, [t for _, t in path]))
            emitted = True
            continue
        level, title, line = head
        if not emitted and heading_line and (not path or level <= path[-1][0]):
            out.append((heading_line, [t for _, t in path]))
        path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
        heading_line, emitted = line, False
    if not emitted and heading_line:
        out.append((heading_line, [t for _, t in path]))
    return out


def _md_blocks(text: str) -> list[str]:
    """Blank-line separated blocks, a heading line always a block of its own, fences kept whole."""
    blocks: list[str] = []
    cur: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None and not line.strip():
            blocks.append("\n".join(cur))
            cur = []
            continue
        elif fence is None and _ATX.match(line):
            blocks += ["\n".join(cur), line.strip()]
            cur = []
            continue
        elif fence is None and len(cur) == 1 and _SETEXT.match(line) and not _ATX.match(cur[0]):
            blocks.append(f"{cur[0].strip()}\n{line.strip()}")
            cur = []
            continue
        cur.append(line)
    blocks.append("\n".join(cur))
    return [b.strip("\n") for b in blocks if b.strip()]


def _md_heading(block: str) -> tuple[int, str, str] | None:
    """``(level, title, the heading as one ATX line)`` when ``block`` is a heading."""
    m = _ATX.match(block)
    if m and "\n" not in block:
        level, title = len(m.group(1)), (m.group(2) or "").strip()
    else:
        lines = block.split("\n")
        if len(lines) != 2 or not _SETEXT.match(lines[1]):
            return None
        level, title = (1 if lines[1].strip()[0] == "=" else 2), lines[0].strip()
    return level, title, f"{'#' * level} {title}".rstrip()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DocumentError(
            f"{str(path)!r} is not valid UTF-8 ({err.reason} at byte {err.start}); convert it first"
        ) from err


def _read_jsonl(path: Path, name: str | None = None) -> list[Passage]:
    out: list[Passage] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name or path.name}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DocumentError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(rec, dict):
            raise DocumentError(f"{where}: each line must be a JSON object, got {type(rec).__name__}")
        key = next((k for k in _TEXT_KEYS if k in rec), None)
        if key is None or not isinstance(rec[key], str):
            raise DocumentError(f"{where}: no text; put it under one of {', '.join(_TEXT_KEYS)}")
        meta = {k: v for k, v in rec.items() if k not in (key, "id")}
        if name is not None:
            meta.setdefault("source", name)
        out.append(Passage(text=rec[key], id=str(rec.get("id") or f"{where}"), metadata=meta))
    return out
