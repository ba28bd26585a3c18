"""Encoding: prefill passages after the shared prefix and keep each passage's own K/V.

The prefix is prefilled once per (model, layout) and reused: as the past of every encoding
batch and as the start of every assembled cache, so both see the very same tensors. Passages
are batched right-padded (sorted by length to waste little padding) and always encoded at
offset ``prefix_len``, so a chunk does not depend on its neighbours.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.chunk import DenseLayer, KVChunk
from ragcompress.kv.encode.eager import eager_view
from ragcompress.kv.encode.reconstruct import reconstruction_prompt, reconstruction_scores
from ragcompress.kv.fingerprint import model_fingerprint, weights_version
from ragcompress.kv.key import ChunkKey, tokens_digest
from ragcompress.kv.prefix import PrefixKV
from ragcompress.kv.presses.protocol import KVPress, build_presses, press_fingerprint
from ragcompress.models.arch import ModelArch, arch_for
from ragcompress.models.compat import cache_kwargs, output_cache
from ragcompress.prompt import PromptLayout
from ragcompress.types import Passage, validate_passages

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ChunkEncoder", "prefix_kv"]

# model -> layout fingerprint -> (weights_version when computed, prefix KV)
_PREFIXES: weakref.WeakKeyDictionary[Any, dict[str, tuple[Hashable, PrefixKV]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def prefix_kv(model: PreTrainedModel, layout: PromptLayout) -> PrefixKV:
    """The shared prefix's KV for ``model`` and ``layout``, computed once per weight version
    (:func:`~ragcompress.kv.fingerprint.weights_version`) and kept; thread-safe."""
    import torch

    fp = layout.fingerprint()
    token = weights_version(model)
    kept = _PREFIXES.get(model, {}).get(fp)
    if kept is not None and kept[0] == token:
        return kept[1]
    with _LOCK:
        per_model = _PREFIXES.setdefault(model, {})
        token = weights_version(model)
        kept = per_model.get(fp)
        if kept is not None and kept[0] == token:
            return kept[1]
        from transformers import DynamicCache

        ids = layout.prefix_ids()
        with torch.inference_mode():
            # a cache without the config: local sliding-window layers keep every prefix token
            # too (transformers' sliding layer drops all but the last window - 1)
            out = model(
                input_ids=torch.tensor([ids], device=model.device),
                use_cache=True,
                **cache_kwargs(model, DynamicCache()),
            )
        cache = output_cache(out)
        keys = [layer.keys[0].clone() for layer in cache.layers]
        values = [layer.values[0].clone() for layer in cache.layers]
        prefix = PrefixKV(tuple(ids), keys, values, model_fingerprint(model), fp)
        per_model[fp] = (token, prefix)
        return prefix


@dataclass
class ChunkEncoder:
    """Turns passages into :class:`KVChunk` objects for one model and prompt layout.

    ``max_batch_tokens`` bounds batch size × longest passage of a batch. Construction fails with
    :class:`~ragcompress.models.arch.UnsupportedModelError` (naming the supported families) when
    the model's family has no adapter or its adapter cannot handle the config.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    layout: PromptLayout | None = None
    max_batch_tokens: int = 4096
    arch: ModelArch = field(init=False, repr=False)
    _layout_fp: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        self.arch = arch_for(self.model)
        if self.layout is None:
            self.layout = PromptLayout(self.tokenizer)
        self._layout_fp = self.layout.fingerprint()

    @classmethod
    def from_generator(cls, generator: Any, **kwargs: Any) -> ChunkEncoder:
        """The encoder matching a :class:`~ragcompress.generate.Generator` (same model and layout)."""
        return cls(generator.lm, generator.tokenizer, generator.layout, **kwargs)

    @property
    def prefix(self) -> PrefixKV:
        assert self.layout is not None
        return prefix_kv(self.model, self.layout)

    @property
    def context_limit(self) -> int | None:
        return self.arch.max_positions

    def passage_ids(self, passage: Passage) -> list[int]:
        assert self.layout is not None
        return self.layout.passage_ids(passage.text)

    def key(self, ids: Sequence[int], presses: Sequence[KVPress] = ()) -> ChunkKey:
        return self.keys([ids], presses)[0]

    def keys(self, ids: Sequence[Sequence[int]], presses: Sequence[KVPress] = ()) -> list[ChunkKey]:
        """The keys of several passages (token ids), the model fingerprinted once for all."""
        return self._keys(ids, presses, model_fingerprint(self.model))

    def _keys(
        self, ids: Sequence[Sequence[int]], presses: Sequence[KVPress] | KVPress | None, model: str
    ) -> list[ChunkKey]:
        pf = press_fingerprint(presses)
        return [
            ChunkKey(model=model, layout=self._layout_fp, presses=pf, tokens=tokens_digest(i)) for i in ids
        ]

    def encode(
        self, passages: Sequence[Passage] | Sequence[str], presses: Sequence[KVPress] = ()
    ) -> list[KVChunk]:
        """One chunk per passage, in order."""
        items = [(p.id, self.passage_ids(p)) for p in validate_passages(passages)]
        return self.encode_ids(items, presses)

    def encode_ids(
        self, items: Sequence[tuple[str, Sequence[int]]], presses: Sequence[KVPress] = ()
    ) -> list[KVChunk]:
        """``items``: (passage id for error messages, passage token ids). Chunks in input order.
        ``presses`` are applied first to last, composed into one press (:func:`build_presses`)."""
        press = build_presses(presses)
        plen = self.prefix.length
        limit = self.context_limit
        for pid, ids in items:
            if not ids:
                raise ValueError(f"passage {pid!r} has no tokens")
            if limit is not None and plen + len(ids) > limit:
                raise ValueError(
                    f"passage {pid!r} has {len(ids)} tokens; after the {plen}-token prefix it exceeds "
                    f"the model's context of {limit} tokens: split or compress it first"
                )
        order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
        out: list[KVChunk | None] = [None] * len(items)
        batch: list[int] = []
        for i in order:
            longest = len(items[i][1])  # sorted ascending: the newcomer is the longest
            if batch and (len(batch) + 1) * longest > self.max_batch_tokens:
                self._encode_batch(items, batch, press, out)
                batch = []
            batch.append(i)
        if batch:
            self._encode_batch(items, batch, press, out)
        return [c for c in out if c is not None]

    def _batch_inputs(
        self, seqs: Sequence[Sequence[int]], n: int, pad: int
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
        """``(ids (b, n) right-padded with pad, attention mask (b, prefix + n), the prefix's cache
        expanded to b rows)`` for one batch of passages after the shared prefix."""
        import torch
        from transformers import DynamicCache

        prefix, dev, b = self.prefix, self.model.device, len(seqs)
        plen = prefix.length
        ids = torch.full((b, n), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((b, plen + n), dtype=torch.long, device=dev)
        mask[:, :plen] = 1
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(list(seq), device=dev)
            mask[row, plen : plen + len(seq)] = 1
        # No config: every layer is a plain dynamic layer, so local (sliding-window) layers
        # return every passage token as well; the model still masks them by its window.
        past = DynamicCache(
            ddp_cache_data=[
                (k[None].expand(b, -1, -1, -1), v[None].expand(b, -1, -1, -1))
                for k, v in zip(prefix.keys, prefix.values, strict=True)
            ]
        )
        return ids, mask, past

    def _encode_batch(
        self,
        items: Sequence[tuple[str, Sequence[int]]],
        batch: list[int],
        press: KVPress | None,
        out: list[KVChunk | None],
    ) -> None:
        import torch

        model, prefix = self.model, self.prefix
        dev, plen = model.device, prefix.length
        lens = [len(items[i][1]) for i in batch]
        n = max(lens)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask, past = self._batch_inputs([items[i][1] for i in batch], n, int(pad))
        needs_attn = bool(getattr(press, "needs_attention", False))
        prompt = reconstruction_prompt([] if press is None else [press])
        # Attention weights come from the model's eager view: the model itself is never switched
        # (other threads may be running it).
        runner = eager_view(model) if needs_attn else model
        with torch.inference_mode():
            res = runner(
                input_ids=ids,
                attention_mask=mask,
                **cache_kwargs(runner, past),
                position_ids=torch.arange(plen, plen + n, device=dev)[None].expand(len(batch), -1),
                cache_position=torch.arange(plen, plen + n, device=dev),
                use_cache=True,
                output_attentions=needs_attn,
                logits_to_keep=1,
            )
        cache = output_cache(res)
        recon = None
        if prompt is not None:  # kvzip: how much repeating each passage looks at its tokens
            prompt_ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            recon = reconstruction_scores(
                model, cache, [items[i][1] for i in batch], prompt_ids, plen, n, int(pad)
            )
        # The prefix's fingerprint: chunks always match the prefix they were encoded after.
        keys = self._keys([items[i][1] for i in batch], press, prefix.model)
        for row, i in enumerate(batch):
            m = lens[row]
            layers = []
            for li, layer in enumerate(cache.layers):
                k = layer.keys[row, :, plen : plen + m].clone()
                v = layer.values[row, :, plen : plen + m].clone()
                pos = torch.arange(plen, plen + m, device=dev)[None].expand(k.shape[0], -1).clone()
                dense = DenseLayer(k, v, pos)
                attn = res.attentions[li][row, :, :m, plen : plen + m] if needs_attn else None
                if recon is not None:
                    attn = recon[li][row, :, None, :m]  # (num_attention_heads, 1, m)
                layers.append(dense if press is None else press(dense, layer_idx=li, attn=attn))
            counts = {layer.num_tokens for layer in layers}
            if len(counts) != 1:
                raise ValueError(
                    f"presses {press_fingerprint(press)} kept different token counts per layer {counts} "
                    f"for passage {items[i][0]!r}; every layer must keep the same number"
                )
            out[i] = KVChunk(
                layers=layers,
                token_ids=torch.tensor(list(items[i][1]), dtype=torch.long, device=dev),
                base_offset=plen,
                length=m,
                key=keys[row],
                model=prefix.model,
            )
