"""The one pipeline spec: what a YAML file, the command line's flags and Python callers describe.

A :class:`PipelineSpec` is a pydantic model with ``extra="forbid"`` and strict types in every
section, so an unknown key or a value of the wrong type fails at once, naming the key path and
where the spec came from (``text-only.yaml: kv.cache_dirr: unknown key``,
``--press: [0].bits: Input should be a valid integer``). Method specs (text compressors, KV
presses, the assembly mode) are checked by :func:`ragcompress.registry.build` against their own
kind and their dataclass fields, so a press given as a compressor fails naming both kinds.

:func:`load_spec` reads a file; :func:`overlay` puts values from another source (a CLI flag, a
keyword argument) over a spec and checks them again, naming that source when they are wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ragcompress.registry import SpecError, build, issues_of, spec_of

if TYPE_CHECKING:
    from ragcompress.generate import Generator

__all__ = [
    "GeneratorSpec",
    "KVSpec",
    "PipelineError",
    "PipelineSpec",
    "RetrieverSpec",
    "SpecError",
    "check_methods",
    "load_spec",
    "overlay",
    "parse_spec",
]


class PipelineError(SpecError):
    """A pipeline spec is missing or malformed (the message names where it came from and the key
    path), or a pipeline is asked for something it cannot do."""


class _Section(BaseModel):
    """A spec section: unknown keys and wrongly typed values fail, naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True)

    def __init__(self, **data: Any) -> None:
        # A SpecError rather than pydantic's multi-line report: one line, key paths joined,
        # and the enclosing section (which calls this for a nested mapping) adds its own path.
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise SpecError.of(issues_of(err)) from None


def _methods(kind: str) -> Callable[[Any], tuple[Any, ...]]:
    """A validator turning one method spec, a list of them, or None into a tuple of checked specs.

    Each item is built once, of ``kind`` (a wrong kind fails naming both), and kept as its full
    spec (defaults filled in) so that the same methods given two ways compare equal; an already
    built object is kept as is (it may hold state a spec cannot carry, such as a loaded tokenizer).
    """

    def check(value: Any) -> tuple[Any, ...]:
        if value is None:
            return ()
        single = isinstance(value, Mapping | str) or hasattr(value, "registered_name")
        items = [value] if single else value
        if not isinstance(items, Sequence):
            raise SpecError(f"expected a spec or a list of specs, got {type(value).__name__}")
        out = []
        for i, item in enumerate(items):
            try:
                obj = build(item, kind)
            except SpecError as err:
                raise (err if single else err.at(f"[{i}]")) from None
            out.append(obj if hasattr(item, "registered_name") else spec_of(obj))
        return tuple(out)

    return check


def check_methods(value: Any, kind: str, source: str) -> tuple[Any, ...]:
    """Method specs of ``kind`` given outside a pipeline spec (``ragcompress index --press``),
    checked as a spec section checks them; errors name ``source``."""
    try:
        return _methods(kind)(value)
    except SpecError as err:
        raise PipelineError.of(err.issues, source) from None


def _assembly(value: Any) -> Any:
    if value is None:
        return None
    from ragcompress.kv.assembly import Assembly, build_assembly

    try:
        mode = build_assembly(value)
    except SpecError:
        raise
    except (TypeError, ValueError) as err:  # pydantic reports only ValueErrors as the key's error
        raise SpecError(str(err)) from err
    return mode if isinstance(value, Assembly) else mode.spec()


def _store(value: Any) -> Any:
    """A chunk-store URL (kept as given) or the settings of a tiered store (checked by
    :class:`~ragcompress.kv.store.spec.StoreSpec`, kept as a mapping so the spec round-trips)."""
    if value is None:
        return value
    from ragcompress.kv.store.spec import StoreSpec

    if isinstance(value, StoreSpec):
        return value
    try:
        if isinstance(value, str):  # checked now (scheme, path, query), opened when built
            StoreSpec.from_url(value)
            return value
        StoreSpec.from_dict(value)
    except (TypeError, ValueError) as err:  # pydantic reports only ValueErrors as the key's error
        raise SpecError(str(err)) from err
    return dict(value)


class PlacementSpec(_Section):
    """How the fast engine places a request's chunks (the kv section's ``fast_placement``; a bare
    name stands for ``{name: …}``): ``copy`` (the default) copies them into the request's buffer
    (:class:`~ragcompress.kv.fast.placement.CopyPlacement`, every family and assembly mode);
    ``paged`` reads them in place from a paged pool of ``pool_tokens`` slots in blocks of
    ``block_size`` (:class:`~ragcompress.kv.fast.placement.PagedPlacement`: dense global-attention
    families, ``concat``), stored in the model's dtype (``storage: model``), in int4
    (``storage: int4``: :class:`~ragcompress.kv.fast.pool_int4.Int4ChunkPool`, ~3.5x the chunks
    in the same memory, dequantized in the attention kernel, the prefix dense) or in int8
    (``storage: int8``: :class:`~ragcompress.kv.fast.pool_int4.Int8ChunkPool`, ~1.9x)."""

    name: Literal["copy", "paged"] = "copy"
    pool_tokens: int = Field(default=65536, ge=1)
    block_size: int = Field(default=64, ge=1)
    storage: Literal["model", "int4", "int8"] = "model"

    @model_validator(mode="after")
    def _paged_fields(self) -> PlacementSpec:
        extra = sorted(self.model_fields_set - {"name"})
        if self.name == "copy" and extra:
            raise ValueError(f"{', '.join(extra)}: only for the paged placement, not copy")
        return self

    def build(self) -> Any:
        """The :class:`~ragcompress.kv.fast.placement.Placement` this spec names."""
        from ragcompress.kv.fast.placement import CopyPlacement, PagedPlacement

        if self.name == "copy":
            return CopyPlacement()
        from ragcompress.kv.fast.pool import ChunkPool
        from ragcompress.kv.fast.pool_int4 import Int4ChunkPool, Int8ChunkPool

        storage = {"model": ChunkPool, "int4": Int4ChunkPool, "int8": Int8ChunkPool}[self.storage]
        return PagedPlacement(pool_tokens=self.pool_tokens, block_size=self.block_size, storage=storage)


def _placement(value: Any) -> Any:
    if value is None or isinstance(value, PlacementSpec):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise SpecError(f"expected a placement name or mapping, got {type(value).__name__}")
    return PlacementSpec(**value)


Compressors = Annotated[tuple[Any, ...], BeforeValidator(_methods("text"))]
StoreSetting = Annotated[Any, BeforeValidator(_store)]
Presses = Annotated[tuple[Any, ...], BeforeValidator(_methods("press"))]
AssemblySpec = Annotated[Any, BeforeValidator(_assembly)]
PlacementSetting = Annotated[Any, BeforeValidator(_placement)]


class RetrieverSpec(_Section):
    """``k`` passages per question from a FAISS index (``index``: one saved by ``ragcompress
    index``; else the documents given to :meth:`Pipeline.index`), embedded with ``embedder``."""

    k: int = Field(default=4, ge=1)
    embedder: str | None = None
    index: str | None = None


class GeneratorSpec(_Section):
    """The reader: keyword arguments of :class:`~ragcompress.generate.Generator`; keys left out
    keep the generator's defaults."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int = Field(default=48, ge=0)
    system: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set}


class KVSpec(_Section):
    """Where cached KV chunks live and how they are compressed (the spec's ``kv`` section).

    ``store`` is the tiers of a tiered store (a mapping of
    :class:`~ragcompress.kv.store.spec.StoreSpec` fields: ``gpu_bytes``, ``host_bytes``,
    ``disk_dir``, ``disk_bytes``, ``redis_url``, ``tenant``) or a single store URL (``redis://…``,
    ``file:///dir`` or a directory, ``memory://``), which stands for the mapping that names it
    (:meth:`~ragcompress.kv.store.spec.StoreSpec.from_url`): either way a memory tier of
    ``memory_bytes`` on the reader's device sits in front unless the mapping sets ``gpu_bytes``
    (``null``: no memory tier). Without ``store`` chunks stay in memory (``memory_bytes``), backed
    by ``cache_dir`` on disk when that is set. ``presses``: KV press specs applied to every chunk
    before it is stored.
    ``fast_capacity`` (context tokens) answers on the fast engine
    (:class:`~ragcompress.kv.fast.answer.FastKVAnswerer`) instead of transformers' forward;
    ``fast_placement`` (a :class:`PlacementSpec`, with ``fast_capacity``) how it places chunks;
    ``fast_batch`` how many questions one step of :meth:`~ragcompress.pipeline.Pipeline.run_batch`
    holds (a ragged batch on the paged placement, each question over its own passages).
    ``assembly`` is an assembly-mode spec (``{"name": "blend", "recompute": 0.15}``, a bare name,
    or None for ``concat``).
    """

    cache_dir: str | None = None
    presses: Presses = ()
    store: StoreSetting = None
    memory_bytes: int = Field(default=2 << 30, gt=0)
    fast_capacity: int | None = Field(default=None, ge=1)
    fast_placement: PlacementSetting = None
    fast_batch: int = Field(default=1, ge=1)
    assembly: AssemblySpec = None

    @model_validator(mode="after")
    def _placement_needs_the_fast_engine(self) -> KVSpec:
        if self.fast_placement is not None and self.fast_capacity is None:
            raise ValueError("fast_placement places chunks on the fast engine: set fast_capacity too")
        if self.fast_batch > 1 and self.fast_capacity is None:
            raise ValueError("fast_batch batches questions on the fast engine: set fast_capacity too")
        return self

    def build(self, generator: Generator) -> Any:
        """A ``KVAnswerer`` over ``generator`` (imported lazily: the KV path pulls in torch)."""
        from ragcompress.kv.answer import KVAnswerer
        from ragcompress.kv.store.spec import StoreSpec

        store: StoreSpec | None = None
        if isinstance(self.store, StoreSpec):
            store = self.store
        elif isinstance(self.store, str):  # the same tiers as {redis_url: …} / {disk_dir: …}
            store = StoreSpec.from_url(self.store, gpu_bytes=self.memory_bytes)
        elif self.store is not None:
            store = StoreSpec.from_dict({"gpu_bytes": self.memory_bytes, **self.store})
        cache_dir = str(Path(self.cache_dir).expanduser()) if self.cache_dir else None
        common: dict[str, Any] = dict(
            cache_dir=cache_dir,
            presses=list(self.presses),
            memory_bytes=self.memory_bytes,
            store=store,
            assembly=self.assembly,
        )
        if self.fast_capacity is not None:
            from ragcompress.kv.fast.answer import FastKVAnswerer

            if self.fast_placement is not None:
                common["placement"] = self.fast_placement.build()
            return FastKVAnswerer.from_generator(
                generator, capacity=self.fast_capacity, max_batch=self.fast_batch, **common
            )
        return KVAnswerer.from_generator(generator, **common)


class PipelineSpec(_Section):
    """A whole pipeline: retrieval → text compressors → generator, or → KV chunks (``kv``).

    ``ratio`` (share of context tokens kept, in (0, 1]) overrides the compressors' own ratios.
    """

    name: str = ""
    description: str = ""
    retriever: RetrieverSpec = RetrieverSpec()
    compressors: Compressors = ()
    generator: GeneratorSpec = GeneratorSpec()
    ratio: float | None = Field(default=None, gt=0, le=1)
    kv: KVSpec | None = None


def parse_spec(data: Any, source: str = "") -> PipelineSpec:
    """A :class:`PipelineSpec` from a parsed mapping; errors name ``source`` and the key path."""
    if isinstance(data, PipelineSpec):
        return data
    if not isinstance(data, Mapping):
        raise PipelineError(f"a pipeline spec is a mapping, got {type(data).__name__}", source=source)
    try:
        return PipelineSpec(**{str(k): v for k, v in data.items()})
    except SpecError as err:
        raise PipelineError.of(err.issues, source) from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and check a YAML spec file; errors start with the file's name."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PipelineError(f"not valid YAML: {' '.join(str(err).split())}", source=path.name) from err
    return parse_spec({} if data is None else data, source=path.name)


def overlay(spec: PipelineSpec, key: str, value: Any, source: str) -> PipelineSpec:
    """``spec`` with the value at ``key`` (a dotted path: ``"retriever.k"``, ``"kv"``) replaced.

    The result is checked again; an error names ``source`` (``"--k"``) and the path inside the
    value, not ``key`` (the flag already says which key it sets)."""
    data = _as_data(spec)
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = _as_data(value) if isinstance(value, BaseModel) else value
    try:
        return PipelineSpec(**data)
    except SpecError as err:
        issues = [(_relative(path, key), msg) for path, msg in err.issues]
        raise PipelineError.of(issues, source) from None


def _as_data(model: BaseModel) -> dict[str, Any]:
    # Only the keys that were set (so that defaults stay defaults), and method specs as they are:
    # pydantic's model_dump would turn an already built press or compressor into a dict.
    return {
        k: _as_data(v) if isinstance(v, BaseModel) else v
        for k in model.model_fields_set
        for v in [getattr(model, k)]
    }


def _relative(path: str, key: str) -> str:
    if path == key:
        return ""
    if path.startswith(key) and path[len(key)] in ".[":
        return path[len(key) :].lstrip(".")
    return path
