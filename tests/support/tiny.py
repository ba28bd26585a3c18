"""Helpers for tests (ours and plugin authors'): tiny seeded models built from configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TINY_FAMILIES",
    "assert_untouched",
    "chunks_close",
    "greedy_logits",
    "make_tiny_gemma3",
    "make_tiny_llama",
    "make_tiny_mistral",
    "make_tiny_qwen2",
    "make_tiny_qwen3",
    "param_snapshot",
    "write_docs",
]


def _tiny_config(vocab_size: int, **fields: Any) -> dict[str, Any]:
    """The shape every tiny family shares: 2 layers, hidden 64, GQA 4 query / 2 KV heads.

    ``initializer_range`` 0.2: at the default 0.02 a random tied-embedding model emits the same
    token forever, so "greedy tokens are identical" would hold trivially; 0.2 gives varied text.
    """
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.2,
        **fields,
    )


def make_tiny_llama(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer Llama with GQA (4 query heads, 2 KV heads), fp32, eval mode, fixed seed.

    ``overrides`` replace any ``LlamaConfig`` field (e.g. ``rope_parameters`` for scaled RoPE).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = _tiny_config(vocab_size, rope_theta=10000.0, tie_word_embeddings=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    model.requires_grad_(False)
    return model


def make_tiny_qwen2(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer Qwen2 (QKV bias, RoPE theta 1e6, untied output layer), GQA 4/2, fp32, eval mode.

    The biases are drawn at the same scale as the weights: at their default of zero a test
    could not tell whether a path drops them. ``overrides`` replace any ``Qwen2Config`` field.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = _tiny_config(vocab_size, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg)).eval()
    for name, param in model.named_parameters():
        if name.endswith(".bias"):
            torch.nn.init.normal_(param, std=cfg["initializer_range"])
    model.requires_grad_(False)
    return model


def make_tiny_mistral(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer Mistral, GQA 4/2, fp32, eval mode, without a sliding window (the KV path refuses
    a window shorter than the context). ``overrides`` replace any ``MistralConfig`` field."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    cfg = _tiny_config(vocab_size, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(**cfg)).eval()
    model.requires_grad_(False)
    return model


def make_tiny_qwen3(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer Qwen3 (per-head RMSNorm on queries and keys before RoPE, no QKV bias, RoPE theta
    1e6, untied output layer), GQA 4/2, fp32, eval mode.

    The q/k norm weights are drawn around 1 (default: all ones) so that a path which skips a
    QK-norm, or applies it after RoPE (they commute only for weights constant over each rotated
    pair), lands elsewhere. ``overrides`` replace any ``Qwen3Config`` field.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = _tiny_config(vocab_size, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**cfg)).eval()
    for name, param in model.named_parameters():
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            torch.nn.init.uniform_(param, 0.25, 2.0)
    model.requires_grad_(False)
    return model


def make_tiny_gemma3(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A 3-layer Gemma 3 text model: local, global, local (``layer_types``), GQA 4/2, fp32, eval.

    ``sliding_window`` 6 is shorter than any test passage (so the local layers' window matters),
    the local and global RoPE bases differ (10 000 and 1e6), ``query_pre_attn_scalar`` 24 is not
    ``head_dim`` (so a path scaling by ``head_dim ** -0.5`` shows), the output logits are
    soft-capped. Norm weights are drawn around zero: Gemma's RMSNorm multiplies by ``1 + w`` and
    at its default ``w = 0`` a path that dropped a norm's weight would go unseen.
    ``overrides`` replace any ``Gemma3TextConfig`` field.
    """
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = _tiny_config(
        vocab_size,
        head_dim=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=6,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        },
        query_pre_attn_scalar=24,
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    cfg["num_hidden_layers"] = 3
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**cfg)).eval()
    for name, param in model.named_parameters():
        if "norm" in name:
            torch.nn.init.normal_(param, std=0.3)
    model.requires_grad_(False)
    return model


# Architectures the KV path (eager and fast) is tested on, each as a tiny seeded model:
# ``TINY_FAMILIES[name](vocab_size, seed=...)``. Add a family here and tests/kv/test_families.py
# checks it.
TINY_FAMILIES: dict[str, Callable[..., Any]] = {
    "llama": make_tiny_llama,
    "mistral": make_tiny_mistral,
    "qwen2": make_tiny_qwen2,
    "qwen3": make_tiny_qwen3,
    "gemma3": make_tiny_gemma3,
}


def greedy_logits(model: Any, ids: list[int]) -> Any:
    """Logits of a fresh prefill of ``ids``, shape (len(ids), vocab): the reference a cached or
    assembled context is checked against."""
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=model.device)).logits[0]


def chunks_close(a: Any, b: Any, atol: float = 1e-5) -> bool:
    """Two :class:`~ragcompress.kv.chunk.KVChunk` s hold the same key and, layer by layer, the same
    stored tensors (codes, scales, positions…) up to ``atol``."""
    import torch

    if a.key != b.key:
        return False
    return all(
        torch.allclose(x.float(), y.float(), atol=atol)
        for la, lb in zip(a.layers, b.layers, strict=True)
        for x, y in zip(la.tensors().values(), lb.tensors().values(), strict=True)
    )


def write_docs(folder: Path) -> Path:
    """``folder/docs`` with a small ``.txt`` (two paragraphs) and a ``.jsonl`` (one document with
    an id): the document formats ``ragcompress ask --docs`` / ``index`` read."""
    import json

    docs = folder / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The Rhine flows into the North Sea.\n\nOxygen is element 8.\n")
    (docs / "b.jsonl").write_text(json.dumps({"id": "w1", "text": "Warsaw is the capital of Poland."}) + "\n")
    return docs


def param_snapshot(model: Any) -> dict[str, tuple[int, int, torch.Tensor]]:
    """Data pointer, version counter and a copy of every parameter (for :func:`assert_untouched`)."""
    return {n: (p.data_ptr(), p._version, p.detach().clone()) for n, p in model.named_parameters()}


def assert_untouched(model: Any, before: dict[str, tuple[int, int, torch.Tensor]]) -> None:
    """Every parameter is the same tensor (data pointer, version counter) with the same bytes."""
    now = dict(model.named_parameters())
    assert now.keys() == before.keys()
    for name, (ptr, version, value) in before.items():
        p = now[name]
        assert (p.data_ptr(), p._version) == (ptr, version), name
        assert torch.equal(p.detach(), value), name
