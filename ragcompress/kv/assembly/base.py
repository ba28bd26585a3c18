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


def register_assembly(name: str) -> Callable[[A], A]:
    """Class decorator: make an :class:`Assembly` subclass buildable from ``{"name": name, ...}``
    (registered in :mod:`ragcompress.registry` as kind ``"assembly"``)."""
    from ragcompress.registry import register

    def deco(cls: A) -> A:
        register(name, kind="assembly")(cls)
        cls.name = name
        return cls

    return deco


def available_assemblies() -> list[str]:
    from ragcompress.registry import available

    return available("assembly")


def build_assembly(spec: Assembly | Mapping[str, Any] | str | None) -> Assembly:
    """An assembly mode from a spec dict, a bare name, a ready object, or ``None`` (→ ``concat``).

    Raises ValueError (a :class:`~ragcompress.registry.SpecError`) naming the unknown mode, the
    unknown field or the field of a wrong type or out of range."""
    from ragcompress.registry import build

    if spec is None:
        spec = {"name": "concat"}
    if isinstance(spec, Assembly):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(f"assembly must be a spec dict, a name or an Assembly, got {type(spec).__name__}")
    if spec.get("name") is None:
        raise ValueError(f"unknown assembly mode None; assembly modes: {', '.join(available_assemblies())}")
    built: Assembly = build(spec, kind="assembly")
    return built


@dataclass(eq=False)
class Context:
    """A ready context for one request (batch 1).

    ``cache``: prefix + chunk slots (``slots`` of them), extended by the question and answer as they
    are decoded. ``position``: logical (RoPE) position of the question's first token. ``bias``:
    (slots,) additive logit bias that every question/answer token adds over the context slots
    (None: plain causal attention). ``recompute``: share of the chunks' kept tokens recomputed;
    ``mode``: the assembly mode's name. ``window`` and ``positions`` (slots,) int64, for a family
    with local sliding-window layers: a local layer's query at logical position ``q`` sees the
    slots whose logical position ``p`` has ``q - window < p`` (by logical position, not by slot:
    re-positioned and compressed chunks leave gaps; see docs/design.md).
    """

    cache: DynamicCache
    position: int
    slots: int
    bias: torch.Tensor | None = None
    recompute: float = 0.0
    mode: str = "concat"
    window: int | None = None
    positions: torch.Tensor | None = None

    def step_kwargs(self, physical: int, n: int) -> dict[str, Any]:
        """Extra forward arguments for ``n`` new tokens written at cache slots ``physical``…:
        a (1, 1, n, physical + n) additive mask when the context carries a bias, one such mask per
        layer type (``full_attention``, ``sliding_attention``) when it has local layers, else nothing."""
        if self.bias is None and self.window is None:
            return {}
        full = self._causal(physical, n)
        if self.window is None:
            return {"attention_mask": full}
        return {
            "attention_mask": {"full_attention": full, "sliding_attention": self._windowed(full, physical, n)}
        }

    def _causal(self, physical: int, n: int) -> torch.Tensor:
        import torch

        ref = self.bias if self.bias is not None else getattr(self.cache.layers[0], "keys", None)
        assert ref is not None
        neg = torch.finfo(ref.dtype).min
        rows = torch.arange(physical, physical + n, device=ref.device)[:, None]
        cols = torch.arange(physical + n, device=ref.device)[None, :]
        mask = torch.where(cols <= rows, 0.0, neg).to(ref.dtype)  # causal over what follows the context
        if self.bias is not None:
            mask[:, : self.slots] = self.bias
        return mask[None, None]

    def _windowed(self, full: torch.Tensor, physical: int, n: int) -> torch.Tensor:
        """``full`` with every key at ``window`` or more logical positions before its query hidden."""
        import torch

        assert self.window is not None and self.positions is not None
        dev = full.device
        # slots past the context hold the question and answer, one logical position each
        new = self.position + torch.arange(physical + n - self.slots, device=dev)
        keys = torch.cat([self.positions.to(dev), new])  # (physical + n,)
        queries = self.position + physical - self.slots + torch.arange(n, device=dev)
        far = queries[:, None] - keys[None, :] >= self.window
        return full.masked_fill(far[None, None], torch.finfo(full.dtype).min)


@dataclass
class Assembly(ABC):
    """One way to assemble cached chunks; subclasses are dataclasses whose fields are the config."""

    name: ClassVar[str] = ""

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **fields}``: what :func:`build_assembly` takes back."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    def check(self, model: PreTrainedModel) -> None:
        """Raise ValueError when ``model`` lacks what this mode needs (called when an answerer is
        built, so that a request never fails half-way): by default, a family adapter
        (:func:`~ragcompress.models.arch.arch_for` raises naming the supported families)."""
        from ragcompress.models.arch import arch_for

        arch_for(model)

    def bind(self, model: PreTrainedModel, tokenizer: Any) -> None:
        """Learn what this mode needs of ``model``'s tokenizer before its first request (called
        when an answerer is built, and by :func:`~ragcompress.kv.context.prepare_context`, where a
        bound mode only looks up what it kept). Most modes read token ids only and need nothing
        (the default)."""
        return None

    def check_fast(self, model: PreTrainedModel | None = None) -> None:
        """Raise ValueError when the fast engine cannot run this mode as configured, or ``model``'s
        family at all (an :class:`~ragcompress.models.arch.UnsupportedModelError` naming it); called
        when a ``FastKVAnswerer`` is built. Every mode runs there unless it says otherwise."""
        if model is not None:
            from ragcompress.models.arch import arch_for

            arch_for(model).require_fast_engine()

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
        return self.write_fast(engine, self.prepare(model, prefix, chunks, question))

    def write_fast(self, engine: Any, ctx: Context) -> tuple[int, float]:
        """Write ``ctx``'s K/V into the fast engine's buffer as is: ``(position, recompute share)``."""
        if ctx.bias is not None:
            raise ValueError(f"{self.name}: the fast engine takes no attention bias over the context")
        layers: list[Any] = [(layer.keys[0], layer.values[0]) for layer in ctx.cache.layers]  # type: ignore[union-attr,index]
        return engine.load_context(layers, ctx.position, ctx.positions), ctx.recompute

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
