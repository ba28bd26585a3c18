"""What the KV path needs to know about one model family: :class:`ModelArch`.

An adapter (one small file per family, e.g. :mod:`ragcompress.models.arch.llama`) turns a
transformers config into a :class:`ModelArch`; the encoder, the presses, assembly, the kernels
and the engines read module names, head counts and RoPE tables from it instead of reaching into
``model.model.layers[i].self_attn`` or the config themselves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

__all__ = ["ROPE_TYPES", "LayerParts", "ModelArch", "ModuleNames", "RopeSpec", "UnsupportedModelError"]

# RoPE variants whose rotation depends only on the position (the frequency table is fixed), so a
# cached key moves to another position by one exact rotation. YaRN/LongRoPE scale cos/sin too (or
# switch tables with the length) and dynamic NTK changes with the sequence length: refused.
ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """A model family, or a configuration of a supported family, the KV path cannot run."""


@dataclass(frozen=True)
class RopeSpec:
    """One RoPE frequency table: ``rope_type`` in :data:`ROPE_TYPES`, base ``theta``, ``rot_dim``
    rotated channels (pairs ``(j, j + rot_dim // 2)``, transformers' ``rotate_half`` pairing);
    ``factor`` for linear/llama3 scaling; the llama3 band edges and original context.
    ``table``: the model's live table where it differs from the config's. transformers computes
    the table in fp32, but ``model.to(torch.bfloat16)`` casts that buffer too (and a later
    ``.float()`` keeps the rounded values), and the model then rotates with those; re-rotating
    cached keys with the exact table would put them off a fresh prefill's, so
    :func:`~ragcompress.models.arch.arch_for` reads the model's own values."""

    rope_type: str
    theta: float
    rot_dim: int
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 0
    table: tuple[float, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise UnsupportedModelError(f"RoPE type {self.rope_type!r} is not one of {list(ROPE_TYPES)}")
        if self.rot_dim <= 0 or self.rot_dim % 2:
            raise UnsupportedModelError(f"RoPE needs an even, positive rotated dimension, got {self.rot_dim}")

    def inv_freq(self) -> torch.Tensor:
        """(rot_dim // 2,) fp32 on CPU: the angle per position of each channel pair. Shared: do
        not modify it in place."""
        return _inv_freq(self)


@functools.cache
def _inv_freq(spec: RopeSpec) -> torch.Tensor:
    # Written as transformers writes it (same fp32 operations), so the table equals the model's
    # own ``rotary_emb.inv_freq`` bit for bit (tests/models/test_arch.py checks it).
    import torch

    d = spec.rot_dim
    inv = 1.0 / (spec.theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(dtype=torch.float) / d))
    if spec.rope_type == "linear":
        inv = inv / spec.factor
    elif spec.rope_type == "llama3":
        inv = _llama3(inv, spec)
    if spec.table is not None:
        return torch.tensor(spec.table, dtype=torch.float32)
    return inv


def _llama3(inv: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    """Llama 3.1's frequency-band scaling: long wavelengths divided by ``factor``, short ones
    kept, a smooth interpolation in between."""
    import torch

    old, low, high, factor = (
        spec.original_max_positions,
        spec.low_freq_factor,
        spec.high_freq_factor,
        spec.factor,
    )
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


@dataclass(frozen=True)
class ModuleNames:
    """Attribute paths of a family's modules. ``decoder``, ``embed``, ``final_norm``, ``lm_head``
    are dotted paths from the ``*ForCausalLM`` model; the others are attributes of one decoder
    layer (``attention``, ``mlp``, the norms), of its attention module (projections, QK-norms) or
    of its MLP (``gate_proj``, ``up_proj``, ``down_proj``: a gated MLP's parts, where it has them)."""

    decoder: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attention: str = "self_attn"
    mlp: str = "mlp"
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    q_norm: str = "q_norm"
    k_norm: str = "k_norm"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"


@dataclass(frozen=True, eq=False)
class LayerParts:
    """The modules of one decoder layer, resolved through :class:`ModuleNames`: what a step that
    computes the layer op by op (the fast engine's) calls. ``q_norm``/``k_norm``: the per-head
    RMS norms on queries/keys before RoPE, None where the family has none. ``gate_proj``,
    ``up_proj``, ``down_proj``: the gated MLP's projections, None where the MLP has none (then
    only ``mlp`` as a whole runs)."""

    attention: Any
    input_norm: Any
    q_proj: Any
    k_proj: Any
    v_proj: Any
    o_proj: Any
    q_norm: Any | None
    k_norm: Any | None
    post_attention_norm: Any
    mlp: Any
    gate_proj: Any | None
    up_proj: Any | None
    down_proj: Any | None


@dataclass(frozen=True)
class ModelArch:
    """The facts of one model (family + config) the KV path uses.

    ``rope``: one :class:`RopeSpec` per decoder layer (families with per-layer-type frequencies,
    e.g. local and global layers, give each layer its type's table). ``qk_norm``: per-head RMS
    norms on queries and keys, applied before RoPE. ``norm_placement``: ``"pre"`` (norm before
    attention and MLP) or ``"sandwich"`` (also after each, before the residual add).
    ``block_order``: the steps of one decoder layer, in order. ``attention_scale``: the
    multiplier of ``q · k``. ``sliding_window``: per layer, the window of a local layer or None.
    ``mlp_act``: the MLP's activation (``config.hidden_act``).
    """

    family: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    rope: tuple[RopeSpec, ...] = field(repr=False)
    attention_scale: float
    qkv_bias: bool = False
    qk_norm: bool = False
    norm_placement: Literal["pre", "sandwich"] = "pre"
    block_order: tuple[str, ...] = field(
        repr=False,
        default=(
            "input_norm",
            "attention",
            "residual",
            "post_attention_norm",
            "mlp",
            "residual",
        ),
    )
    sliding_window: tuple[int | None, ...] = field(default=(), repr=False)
    max_positions: int | None = None
    mlp_act: str = "silu"
    names: ModuleNames = field(default_factory=ModuleNames, repr=False)

    def __post_init__(self) -> None:
        if len(self.rope) != self.num_layers:
            raise ValueError(f"{self.family}: {len(self.rope)} RoPE tables for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"{self.family}: {self.num_heads} query heads do not group over {self.num_kv_heads} KV heads"
            )
        if not self.sliding_window:
            object.__setattr__(self, "sliding_window", (None,) * self.num_layers)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA): query head ``j`` reads KV head ``j // group_size``."""
        return self.num_heads // self.num_kv_heads

    def rope_for(self, layer_idx: int) -> RopeSpec:
        return self.rope[layer_idx]

    def uniform_rope(self, what: str) -> RopeSpec:
        """The one RoPE table every layer shares; ``what`` names the caller in the error raised
        for families with per-layer-type tables."""
        if len(set(self.rope)) != 1:
            raise UnsupportedModelError(
                f"{what} needs one RoPE table for all layers; {self.family} has several"
            )
        return self.rope[0]

    # -- modules -------------------------------------------------------------------------------
    def layers(self, model: Any) -> Sequence[Any]:
        """The decoder layers of ``model`` (a ``*ForCausalLM`` or an eager view of one)."""
        layers = _resolve(model, self.names.decoder)
        if layers is None or len(layers) != self.num_layers:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no {self.num_layers} decoder layers at "
                f"{self.names.decoder!r} as the {self.family} adapter expects"
            )
        return layers  # type: ignore[no-any-return]

    def attention(self, layer: Any) -> Any:
        """The attention module of one decoder layer."""
        return getattr(layer, self.names.attention)

    def module(self, model: Any, which: Literal["embed", "final_norm", "lm_head"]) -> Any:
        path = getattr(self.names, which)
        found = _resolve(model, path)
        if found is None:
            raise UnsupportedModelError(f"{type(model).__name__} has no {path!r} ({self.family} adapter)")
        return found

    def parts(self, layer: Any) -> LayerParts:
        """The modules of one decoder layer (resolved now: a module replaced later, e.g. by
        adapter injection, is seen by the next call)."""
        n = self.names
        attn, mlp = self.attention(layer), getattr(layer, n.mlp)
        return LayerParts(
            attention=attn,
            input_norm=getattr(layer, n.input_norm),
            q_proj=getattr(attn, n.q_proj),
            k_proj=getattr(attn, n.k_proj),
            v_proj=getattr(attn, n.v_proj),
            o_proj=getattr(attn, n.o_proj),
            q_norm=getattr(attn, n.q_norm) if self.qk_norm else None,
            k_norm=getattr(attn, n.k_norm) if self.qk_norm else None,
            post_attention_norm=getattr(layer, n.post_attention_norm),
            mlp=mlp,
            gate_proj=getattr(mlp, n.gate_proj, None),
            up_proj=getattr(mlp, n.up_proj, None),
            down_proj=getattr(mlp, n.down_proj, None),
        )

    def project(self, parts: LayerParts, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-RoPE queries (n, heads, head_dim), keys and values (n, kv_heads, head_dim) of one
        layer from its normed input ``h`` (n, hidden_size): the projections (with their biases),
        then the QK-norm where the family has one (before RoPE, as the model applies it)."""
        n = h.shape[-2]
        q = parts.q_proj(h).view(n, self.num_heads, self.head_dim)
        k = parts.k_proj(h).view(n, self.num_kv_heads, self.head_dim)
        v = parts.v_proj(h).view(n, self.num_kv_heads, self.head_dim)
        if parts.q_norm is not None and parts.k_norm is not None:
            q, k = parts.q_norm(q), parts.k_norm(k)
        return q, k, v

    def queries(self, layer: Any, hidden: torch.Tensor) -> torch.Tensor:
        """Pre-RoPE queries (heads, n, head_dim) of one decoder layer for its input ``hidden``
        (1, n, hidden_size): input norm, query projection (with its bias), QK-norm if any."""
        p = self.parts(layer)
        q = p.q_proj(p.input_norm(hidden))
        q = q.view(q.shape[1], self.num_heads, self.head_dim)  # (n, heads, head_dim)
        if p.q_norm is not None:
            q = p.q_norm(q)
        return q.transpose(0, 1)

    def check_model(self, model: Any) -> None:
        """Raise :class:`UnsupportedModelError` when ``model`` lacks a module this adapter names."""
        layers = self.layers(model)
        n = self.names
        wanted = [n.attention, n.mlp, n.input_norm, n.post_attention_norm]
        attn_parts = [n.q_proj, n.k_proj, n.v_proj, n.o_proj] + ([n.q_norm, n.k_norm] if self.qk_norm else [])
        for i, layer in enumerate(layers):
            missing = [w for w in wanted if not hasattr(layer, w)]
            missing += [f"{n.attention}.{p}" for p in attn_parts if not hasattr(self.attention(layer), p)]
            if missing:
                raise UnsupportedModelError(
                    f"{type(model).__name__} layer {i} has no {missing} ({self.family} adapter)"
                )
        for which in ("embed", "final_norm", "lm_head"):
            self.module(model, which)  # type: ignore[arg-type]


def _resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
