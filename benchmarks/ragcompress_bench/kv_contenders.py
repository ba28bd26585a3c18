"""Contenders of ``ragcompress bench kv``: each turns an example's passages into a KV context.

A context is ``(ctx, bytes_frac)``: a :class:`~ragcompress.kv.assembly.Context` (its ``cache``
holds the shared prefix and the passages, ``position`` is the RoPE position the question starts
at: it differs from the cache length when tokens were evicted; ``step_kwargs`` the attention masks
a family with local sliding-window layers needs over re-positioned or evicted chunks) and the
stored bytes over the fp16 bytes of the same tokens uncompressed.

* :class:`FullPrefill`: prefix + passages prefilled together (the no-compression baseline);
* :class:`Chunks`: ragcompress's KV path as served: each passage encoded once as a chunk after the
  shared prefix, pressed (``spec``; None = uncompressed), and assembled with re-rotated keys;
* :class:`KVPressAnchor`: a kvpress press applied to the whole-context prefill, kvpress's own
  setting (bytes = kept tokens / context tokens: kvpress keeps the model's dtype).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.models.arch import arch_for
from ragcompress.models.compat import cache_kwargs, output_cache
from ragcompress_bench.contender import Unavailable, package_version

if TYPE_CHECKING:
    from ragcompress.generate import Generator
    from ragcompress.kv.assembly import Context

__all__ = ["CHUNKS", "FULL", "Chunks", "FullPrefill", "KVContender", "KVPressAnchor", "KVSession"]

# The baselines' row labels: every other row's agreement is measured against these two.
FULL, CHUNKS = "full prefill", "chunks (no press)"


@dataclass
class KVSession:
    """What every contender shares: the reader, its prompt layout and a chunk encoder."""

    gen: Generator
    encoder: Any = field(init=False)

    def __post_init__(self) -> None:
        from ragcompress.kv.encode.encoder import ChunkEncoder

        self.encoder = ChunkEncoder.from_generator(self.gen)

    def context_ids(self, passages: list[str]) -> list[int]:
        ids = list(self.gen.layout.prefix_ids())
        for p in passages:
            ids += self.gen.layout.passage_ids(p)
        return ids

    def prefill(self, ids: list[int]) -> Any:
        """A DynamicCache of ``ids`` (one sequence), prefilled in one forward pass."""
        import torch
        from transformers import DynamicCache

        with torch.inference_mode():
            out = self.gen.lm(
                input_ids=torch.tensor([ids], device=self.gen.lm.device),
                **cache_kwargs(self.gen.lm, DynamicCache(config=self.gen.lm.config)),
                use_cache=True,
                # kvpress's hooks read cache_position from the attention kwargs
                cache_position=torch.arange(len(ids), device=self.gen.lm.device),
            )
        return output_cache(out)


@dataclass
class KVContender:
    """Base: ``label`` names the row, ``family`` groups rows in the plot."""

    label: str
    family: str = "ours"

    @property
    def version(self) -> str:
        return "ragcompress " + package_version("ragcompress-core")

    def setup(self) -> None:
        """Raise :class:`Unavailable` with the exact reason when this row cannot run here."""

    def context(self, session: KVSession, passages: list[str]) -> tuple[Context, float]:
        raise NotImplementedError


@dataclass
class FullPrefill(KVContender):
    label: str = FULL
    family: str = "baseline"

    def context(self, session: KVSession, passages: list[str]) -> tuple[Context, float]:
        ids = session.context_ids(passages)
        return _plain(session.prefill(ids), len(ids)), _dtype_bytes(session) / 2


@dataclass
class Chunks(KVContender):
    """``spec``: a press spec (dict or list for a chain) as ``ragcompress.build`` takes; None = none."""

    spec: Any = None

    def setup(self) -> None:
        if self.spec is not None:
            import ragcompress

            ragcompress.build(self.spec)  # an unknown press or bad parameter fails here, early

    def context(self, session: KVSession, passages: list[str]) -> tuple[Context, float]:
        import ragcompress
        from ragcompress.kv.context import prepare_context

        presses = [ragcompress.build(self.spec)] if self.spec is not None else []
        chunks = session.encoder.encode(passages, presses)
        # the whole Context, not only its cache: Gemma 3's local layers see keys by logical
        # position (ctx.step_kwargs), and evicted chunks leave gaps the model's own mask ignores
        ctx = prepare_context(session.gen.lm, session.gen.layout, chunks, ())
        frac = sum(c.nbytes for c in chunks) / sum(c.nbytes_fp16 for c in chunks)
        return ctx, frac


@dataclass
class KVPressAnchor(KVContender):
    """``press``: a kvpress class name (``KnormPress``, ``SnapKVPress``, …); ``params`` its fields."""

    family: str = "kvpress"
    press: str = "KnormPress"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return "kvpress " + package_version("kvpress")

    def setup(self) -> None:
        try:
            import kvpress
        except Exception as err:  # kvpress imports datasets/pandas/…: any of them may be missing
            raise Unavailable(f"cannot import kvpress ({type(err).__name__}: {err})") from err
        if not hasattr(kvpress, self.press):
            raise Unavailable(f"kvpress {package_version('kvpress')} has no {self.press}")

    def context(self, session: KVSession, passages: list[str]) -> tuple[Context, float]:
        import kvpress

        arch = arch_for(session.gen.lm)
        if arch.local_window is not None:
            # kvpress presses the local layers' caches too; transformers then sizes their masks
            # by the tokens seen, not kept: the next forward fails on a shape mismatch
            raise Unavailable(
                f"kvpress {package_version('kvpress')} does not run {arch.family} (local sliding-window "
                "layers): transformers' window masks no longer match its pressed caches"
            )
        ids = session.context_ids(passages)
        press = getattr(kvpress, self.press)(**self.params)
        with _cache_alias(session.gen.lm), press(session.gen.lm):
            cache = session.prefill(ids)
        return _plain(cache, len(ids)), cache.get_seq_length() / len(ids) * _dtype_bytes(session) / 2


@contextmanager
def _cache_alias(model: Any) -> Iterator[None]:
    """kvpress 0.5.5's hook reads the cache from the attention's ``past_key_values`` keyword;
    newer transformers pass it as ``cache``. A forward hook registered before kvpress's runs
    first and adds the old name to the same keyword dict (benchmark-side shim, not library code)."""

    def alias(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if "past_key_values" not in kwargs and "cache" in kwargs:
            kwargs["past_key_values"] = kwargs["cache"]

    arch = arch_for(model)  # the family adapter names the attention modules
    attns = [arch.attention(layer) for layer in arch.layers(model)]
    handles = [a.register_forward_hook(alias, with_kwargs=True) for a in attns]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _plain(cache: Any, position: int) -> Context:
    """A whole-context prefill's cache as a Context: the model's own masks, nothing added."""
    from ragcompress.kv.assembly import Context

    return Context(cache=cache, position=position, slots=cache.get_seq_length())


def _dtype_bytes(session: KVSession) -> int:
    """Bytes per cached element of the reader (fp32 on CPU: 4, i.e. 2x fp16)."""
    return int(next(session.gen.lm.parameters()).element_size())
