"""Assembly modes: how cached chunks become the context a question is answered from.

A mode is a dataclass (its fields are its configuration) registered by name; :func:`build_assembly`
builds one from a spec ``{"name": ..., **fields}`` and :meth:`Assembly.spec` gives the spec back.
A mode's :meth:`Assembly.prepare` turns the shared prefix + chunks (+ the question, for modes that
look at it) into a :class:`Context`: a transformers cache, the position where the question starts,
an optional additive bias over the context slots that every question/answer token carries, and the
share of context tokens that were recomputed. Chunks never depend on the mode: every mode reads the
chunks as they are encoded today (after the shared prefix, at ``base_offset`` = prefix length).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.chunk import KVChunk

__all__ = ["Assembly", "Context", "available_assemblies", "build_assembly", "register_assembly"]

A = TypeVar("A", bound="type[Assembly]")

_MODES: dict[str, type[Assembly]] = {}


def register_assembly(name: str) -> Callable[[A], A]:
    """Class decorator: make an :class:`Assembly` subclass buildable from ``{"name": name, ...}``."""

    def deco(cls: A) -> A:
        old = _MODES.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"assembly name {name!r} is already registered to {old.__qualname__}")
        _MODES[name] = cls
        cls.name = name
        return cls

    return deco


def available_assemblies() -> list[str]:
    return sorted(_MODES)


def build_assembly(spec: Assembly | Mapping[str, Any] | str | None) -> Assembly:
    """An assembly mode from a spec dict, a bare name, a ready object, or ``None`` (→ ``concat``).

    Raises ValueError naming the unknown mode, the unknown field or the field out of range."""
    if spec is None:
        spec = {"name": "concat"}
    if isinstance(spec, Assembly):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(f"assembly must be a spec dict, a name or an Assembly, got {type(spec).__name__}")
    fields = dict(spec)
    name = fields.pop("name", None)
    if name not in _MODES:
        raise ValueError(f"unknown assembly mode {name!r}; available: {available_assemblies()}")
    cls = _MODES[name]
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"assembly {name!r} has no field {unknown[0]!r}; its fields: {sorted(known)}")
    return cls(**fields)


@dataclass(eq=False)
class Context:
    """A ready context for one request (batch 1).

    ``cache``: prefix + chunk slots (``slots`` of them), extended by the question and answer as they
    are decoded. ``position``: logical (RoPE) position of the question's first token. ``bias``:
    (slots,) additive logit bias that every question/answer token adds over the context slots
    (None: plain causal attention). ``recompute``: share of the chunks' kept tokens recomputed;
    ``mode``: the assembly mode's name.
    """

    cache: DynamicCache
    position: int
    slots: int
    bias: torch.Tensor | None = None
    recompute: float = 0.0
    mode: str = "concat"

    def step_kwargs(self, physical: int, n: int) -> dict[str, Any]:
        """Extra forward arguments for ``n`` new tokens written at cache slots ``physical``…:
        a (1, 1, n, physical + n) additive mask when the context carries a bias, else nothing."""
        if self.bias is None:
            return {}
        import torch

        bias = self.bias
        neg = torch.finfo(bias.dtype).min
        rows = torch.arange(physical, physical + n, device=bias.device)[:, None]
        cols = torch.arange(physical + n, device=bias.device)[None, :]
        mask = torch.where(cols <= rows, 0.0, neg).to(bias.dtype)  # causal over what follows the context
        mask[:, : self.slots] = bias
        return {"attention_mask": mask[None, None]}


@dataclass
class Assembly(ABC):
    """One way to assemble cached chunks; subclasses are dataclasses whose fields are the config."""

    name: ClassVar[str] = ""

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **fields}``: what :func:`build_assembly` takes back."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    def check(self, model: PreTrainedModel) -> None:
        """Raise ValueError when ``model`` lacks what this mode needs (called when an answerer is
        built, so that a request never fails half-way)."""
        from ragcompress.kv.context import rotary_of

        rotary_of(model)

    def check_fast(self) -> None:
        """Raise ValueError when the fast engine cannot run this mode as configured (called when a
        ``FastKVAnswerer`` is built); every mode runs there unless it says otherwise."""
        return None

    def load_fast(
        self,
        engine: Any,
        packed_prefix: Any,
        model: PreTrainedModel,
        prefix: PrefixKV,
        chunks: Sequence[KVChunk],
        question: Sequence[int],
    ) -> tuple[int, float]:
        """Put one request's context into the fast engine's buffer; returns ``(position where the
        question starts, recompute share)``. Default: :meth:`prepare` on the eager model (any
        partial forward runs there), then the assembled K/V are written into the buffer as is."""
        ctx = self.prepare(model, prefix, chunks, question)
        if ctx.bias is not None:
            raise ValueError(f"{self.name}: the fast engine takes no attention bias over the context")
        layers: list[Any] = [(layer.keys[0], layer.values[0]) for layer in ctx.cache.layers]  # type: ignore[union-attr,index]
        return engine.load_context(layers, ctx.position), ctx.recompute

    @abstractmethod
    def prepare(
        self, model: PreTrainedModel, prefix: PrefixKV, chunks: Sequence[KVChunk], question: Sequence[int]
    ) -> Context:
        """The context of one request: ``question`` is the question's token ids (chat template
        included), which modes that choose by the question use; the others ignore it."""


def number(owner: str, field: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or (low, high] with ``low_open``); ValueError names the field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{owner}.{field} must be a number, got {value!r}")
    v = float(value)
    if not (low < v if low_open else low <= v) or not v <= high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{owner}.{field} must be in {bracket}{low}, {high}], got {value!r}")
    return v
