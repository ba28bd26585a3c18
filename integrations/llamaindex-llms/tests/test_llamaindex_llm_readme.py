"""The README's examples run as written, in order, in one namespace (slow: packaged SmolLM2)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_index.core import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture()
def restore_settings_llm() -> Iterator[None]:
    previous = Settings._llm
    yield
    Settings._llm = previous


@pytest.mark.slow
@pytest.mark.usefixtures("restore_settings_llm")
def test_readme_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 2
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        exec(compile(textwrap.dedent(block), f"README.md[python block {i}]", "exec"), namespace)
    assert capsys.readouterr().out.strip()
    assert namespace["response"].metadata["ragcompress"]["chunks_encoded"] == 2  # type: ignore[attr-defined]
