"""Contenders: anything that maps an example's passages to (shorter) passages.

A contender that cannot run here raises :class:`Unavailable` from :meth:`Contender.setup`
with the exact reason; the runner turns that into a table row instead of dropping it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragcompress.types import Passage
from ragcompress_bench.data import QAExample

__all__ = ["Contender", "NoCompression", "Ours", "Unavailable", "package_version"]


class Unavailable(RuntimeError):
    """This contender cannot run in this environment; the message says why."""


def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@dataclass
class Contender:
    """Base: ``name`` labels the row; ``target`` is the share of tokens to keep (None: its own)."""

    name: str
    target: float | None = None

    @property
    def version(self) -> str:
        return "ragcompress " + package_version("ragcompress-core")

    @property
    def label(self) -> str:
        return self.name if self.target is None else f"{self.name}@{self.target:g}"

    def setup(self) -> None:
        """Load what is needed (models, packages); raise :class:`Unavailable` if it cannot run."""

    def compress(self, example: QAExample) -> list[Passage]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "version": self.version}


@dataclass
class NoCompression(Contender):
    name: str = "none"

    def compress(self, example: QAExample) -> list[Passage]:
        return list(example.passages)


@dataclass
class Ours(Contender):
    """A registered ragcompress text compressor (or chain), built from ``spec``."""

    spec: Any = None
    _compressor: Any = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        import ragcompress

        try:
            self._compressor = ragcompress.build(self.spec)
        except KeyError as err:  # not registered (yet) in this checkout
            raise Unavailable(str(err).strip("'\"")) from err

    def compress(self, example: QAExample) -> list[Passage]:
        from ragcompress.types import Budget

        budget = Budget(ratio=self.target) if self.target is not None else None
        return list(self._compressor.compress(example.passages, example.question, budget))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["spec"] = self._compressor.spec() if self._compressor is not None else self.spec
        return out
