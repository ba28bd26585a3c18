"""Model shapes of ``ragcompress bench ttft --shape``: random weights from a real model's config,
written inline from its public ``config.json`` (no hub), one config class per family.

Each shape is ``(model_type, config fields)``; :func:`build_model` builds it with transformers'
config class for that ``model_type`` (``AutoConfig.for_model``) directly on the device. The
``tiny-*`` shapes are the same families at toy size, for CPU smoke runs (the Gemma 3 one with
a sliding window shorter than the contexts, so the local layers' window is exercised).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SHAPES", "build_model", "head_dim", "kv_bytes_per_token", "weight_bytes"]


def _gemma3_layers(n: int, pattern: int = 6) -> list[str]:
    """Gemma 3's ``sliding_window_pattern``: every ``pattern``-th layer global, the rest local."""
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]


def _gemma3_rope(local: float, glob: float, factor: float) -> dict[str, Any]:
    """Local layers: ``rope_local_base_freq``; global ones: ``rope_theta`` with linear scaling."""
    full: dict[str, Any] = {"rope_type": "linear", "rope_theta": glob, "factor": factor}
    if factor == 1.0:
        full = {"rope_type": "default", "rope_theta": glob}
    return {"sliding_attention": {"rope_type": "default", "rope_theta": local}, "full_attention": full}


_TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=256, vocab_size=2048, max_position_embeddings=65536)  # fmt: skip

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3-8b": (
        "llama",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
    ),
    # Qwen2.5-7B-Instruct: QKV bias (always on in Qwen2 attention), untied output layer
    "qwen2.5-7b": (
        "qwen2",
        dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            tie_word_embeddings=False,
            use_sliding_window=False,
        ),
    ),
    # Mistral-7B-v0.3: no sliding window
    "mistral-7b": (
        "mistral",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=32768,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
            rope_theta=1e6,
            sliding_window=None,
            tie_word_embeddings=False,
        ),
    ),
    # Gemma-3-12B (text_config): head_dim 256, window 1024 on 5 of 6 layers (sliding_window_pattern
    # 6), local RoPE base 1e4, global 1e6 with linear factor 8, queries scaled by 256 ** -0.5,
    # no soft-capping, tied output layer
    "gemma3-12b": (
        "gemma3_text",
        dict(
            hidden_size=3840,
            num_hidden_layers=48,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            intermediate_size=15360,
            vocab_size=262208,
            max_position_embeddings=131072,
            rms_norm_eps=1e-6,
            sliding_window=1024,
            layer_types=_gemma3_layers(48),
            rope_parameters=_gemma3_rope(1e4, 1e6, 8.0),
            query_pre_attn_scalar=256,
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
            tie_word_embeddings=True,
        ),
    ),
    "tiny": ("llama", dict(_TINY, rope_theta=500000.0)),
    "tiny-qwen2.5": (
        "qwen2",
        dict(_TINY, rope_theta=1e6, tie_word_embeddings=False, use_sliding_window=False),
    ),
    "tiny-mistral": ("mistral", dict(_TINY, rope_theta=1e6, sliding_window=None, tie_word_embeddings=False)),
    "tiny-gemma3": (
        "gemma3_text",
        dict(
            _TINY,
            num_hidden_layers=3,
            head_dim=32,
            sliding_window=16,
            query_pre_attn_scalar=32,
            layer_types=_gemma3_layers(3, pattern=2),
            rope_parameters=_gemma3_rope(1e4, 1e6, 8.0),
            tie_word_embeddings=True,
        ),
    ),
}


def build_model(shape: str, device: str, dtype: Any) -> Any:
    """The shape's ``*ForCausalLM`` with random weights created directly on ``device`` (no CPU
    copy, no hub), through its family's config class."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, fields = SHAPES[shape]
    cfg = AutoConfig.for_model(model_type, **fields)
    cfg._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)


def head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def weight_bytes(model: Any) -> int:
    """Bytes of the weights one step reads: every parameter but the input embedding, plus the
    output layer where it is tied to the embedding (it is read whole at every step)."""
    total = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and out.weight is emb.weight:
        total += out.weight.numel() * out.weight.element_size()
    return int(total)


def kv_bytes_per_token(cfg: Any, ctx: int, dtype_bytes: int = 2) -> float:
    """Context K/V bytes a question must read, per context token (averaged over ``ctx``): every
    layer's, except that a local (sliding-window) layer reads at most its window's."""
    per_layer = 2 * cfg.num_key_value_heads * head_dim(cfg) * dtype_bytes
    return per_layer * sum(context_seen(cfg, ctx)) / max(ctx, 1)


def context_seen(cfg: Any, ctx: int) -> list[int]:
    """Per layer, the context tokens a question reads: all ``ctx``, or a local (sliding-window)
    layer's window."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    return [min(ctx, window) if t == "sliding_attention" and window else ctx for t in types]


def step_flops(cfg: Any, batch: int, tokens: int, ctx: int) -> float:
    """Matrix FLOPs of one question step to the first token: ``batch`` questions of ``tokens``
    tokens each, over a shared ``ctx``-token context. Every layer's projections and gated MLP
    for every token; attention (scores and values) of every token over the context keys its
    layer sees (a local layer: its window's) and, on average, half its own question; the output
    layer for each question's last token only (the step returns only those logits). Norms,
    RoPE and softmax are left out, so this is a lower bound of the work."""
    d, hidden, heads = head_dim(cfg), cfg.hidden_size, cfg.num_attention_heads
    linear = 2 * hidden * (heads + 2 * cfg.num_key_value_heads) * d + 2 * heads * d * hidden
    linear += 3 * 2 * hidden * cfg.intermediate_size  # gate, up and down
    per_layer = context_seen(cfg, ctx)
    seen = sum(per_layer) + len(per_layer) * (tokens + 1) / 2
    per_token = linear * len(per_layer) + 4 * heads * d * seen
    return batch * tokens * per_token + 2 * hidden * cfg.vocab_size * batch
