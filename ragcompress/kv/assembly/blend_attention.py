"""``blend``'s own attention inside a transformers forward: the question probe's scores and the
partial forward's grouped-query attention, without leaving the model's forward.

transformers picks each layer's attention function by ``config._attn_implementation`` from its
:class:`~transformers.AttentionInterface` registry. :func:`blend_attention` registers one function
under :data:`NAME` and runs the forward on a view of the model (same tensors, own config copy set
to :data:`NAME`: :func:`~ragcompress.kv.encode.eager.attention_view`, as the eager view for
attention weights), so the model a user or another request holds is never switched. The function
serves the :class:`AttentionJob` set for the current thread or task (a :mod:`contextvars`
variable). Two jobs:

* :class:`Probe`: the question runs over the assembled cache; per layer, the softmax weights of
  every query head and question token over the context are computed from the cached keys in one
  grouped matmul (fp32, as the scores need), their largest value per context slot is summed into
  ``total``, and the attention output reuses those weights (no second pass over the keys, no
  ``output_attentions`` through eager attention, no query recomputation from hidden states).
* :class:`Packed`: the partial forward of the recomputed tokens attends under an arbitrary mask.
  transformers' SDPA path copies every KV head ``group`` times when a mask is given (``repeat_kv``:
  at 10K context and 32 heads, ~80 MB per layer); here the ``group`` query heads that share a KV
  head are stacked along the query axis instead, so SDPA reads each KV head once, and the tokens
  are cut into runs that each read only the cache prefix they can see, with their masks built
  once per request in that stacked layout (:func:`packed_blocks`); on a GPU the runs execute
  side by side on their own streams. On a GPU with Triton,
  :func:`~ragcompress.kv.assembly.flash_packed.packed_job` returns a
  :class:`~ragcompress.kv.assembly.flash_packed.FlashPacked` instead: one flash kernel per layer
  that masks each token by its position itself (no masks built, 1.7–2.8× faster on an H200).
"""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = [
    "NAME",
    "AttentionJob",
    "Block",
    "Packed",
    "Probe",
    "blend_attention",
    "packed_blocks",
]

NAME = "ragcompress_blend"

_JOB: contextvars.ContextVar[AttentionJob | None] = contextvars.ContextVar(
    "ragcompress_blend_job", default=None
)


class AttentionJob:
    """What :data:`NAME` computes for the forward that set it; ``config`` is that model's config.
    ``windows``: per layer, the window of a local sliding-window layer or None (empty: no local
    layers)."""

    config: Any
    windows: tuple[int | None, ...]

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, layer: int
    ) -> torch.Tensor:
        """``query`` (1, heads, n, d) after RoPE, ``key``/``value`` (1, kv_heads, slots, d) the
        whole cache after layer ``layer``'s update → (1, n, heads, d)."""
        raise NotImplementedError

    def local(self, layer: int) -> bool:
        """Whether ``layer`` is a local sliding-window layer."""
        return bool(self.windows) and self.windows[layer] is not None


def _heads(query: torch.Tensor, key: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """``(batch, heads, n, head_dim, kv_heads, group)`` of an :meth:`AttentionJob.attend` call:
    ``group`` query heads share each KV head (GQA)."""
    b, heads, n, d = query.shape
    kv_heads = key.shape[1]
    return b, heads, n, d, kv_heads, heads // kv_heads


@dataclass(eq=False)
class Probe(AttentionJob):
    """The question (``n`` tokens, appended after ``slots`` context slots) over the assembled
    cache; ``total`` (slots,) fp32 gets, per layer, the largest softmax weight any head of the
    question's last ``voters`` tokens (None: all ``n``) gives each context slot. ``far``
    (group * n, slots + n) bool, with local layers: the keys each query row (group-major: row
    ``g * n + t`` is token ``t``) is too far from to see at a local layer (by logical position),
    made once for every local layer."""

    config: Any
    slots: int
    total: torch.Tensor
    windows: tuple[int | None, ...] = ()
    far: torch.Tensor | None = None
    voters: int | None = None
    _later: torch.Tensor | None = field(default=None, repr=False)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, layer: int
    ) -> torch.Tensor:
        import torch

        _, heads, n, d, kv_heads, group = _heads(query, key)
        # (kv_heads, group * n, d): query head j = kv_head * group + g reads KV head j // group
        q = query[0].reshape(kv_heads, group * n, d).float() * scaling
        logits = torch.matmul(q, key[0].float().transpose(1, 2))  # (kv_heads, group * n, slots + n)
        if self._later is None:  # (group * n, n): which question tokens each row may not see yet
            tokens = torch.arange(n, device=q.device)
            self._later = tokens[None, :] > tokens.repeat(group)[:, None]
        logits[:, :, self.slots :] = logits[:, :, self.slots :].masked_fill(self._later, float("-inf"))
        if self.far is not None and self.local(layer):
            logits = logits.masked_fill(self.far, float("-inf"))
        probs = logits.softmax(dim=-1)
        first = 0 if self.voters is None else max(0, n - self.voters)
        # (kv_heads, group, n, slots): the voting tokens' weights over the context
        votes = probs.view(kv_heads, group, n, -1)[:, :, first:, : self.slots]
        self.total += votes.amax(dim=(0, 1, 2))
        out = torch.matmul(probs.to(value.dtype), value[0])  # (kv_heads, group * n, d)
        return out.reshape(1, heads, n, d).transpose(1, 2)


@dataclass(frozen=True, eq=False)
class Block:
    """Recomputed tokens ``start:stop`` (in slot order), which see only the first ``end`` cache
    slots; ``mask`` (1, 1, (stop - start) * group, end) additive, token-major (row ``i * group +
    j`` is token ``start + i`` as seen by the ``j``-th query head that shares a KV head);
    ``local_mask`` the same at local sliding-window layers (None without them)."""

    start: int
    stop: int
    end: int
    mask: torch.Tensor
    local_mask: torch.Tensor | None = None


@dataclass(eq=False)
class Packed(AttentionJob):
    """The recomputed tokens, in :func:`packed_blocks`' ``blocks``."""

    config: Any
    blocks: list[Block]
    windows: tuple[int | None, ...] = ()

    @property
    def mask(self) -> torch.Tensor:
        """The 4D mask to hand the forward (transformers builds none when given one)."""
        return self.blocks[0].mask

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, layer: int
    ) -> torch.Tensor:
        import torch
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        b, heads, n, d, kv_heads, group = _heads(query, key)
        # (b, kv_heads, n * group, d): the query heads that share a KV head stacked token-major
        q = query.reshape(b, kv_heads, group, n, d).transpose(2, 3).reshape(b, kv_heads, n * group, d)
        local = self.local(layer)
        outs = _side_by_side(
            q.device,
            [
                functools.partial(
                    sdpa,
                    q[:, :, blk.start * group : blk.stop * group],
                    key[:, :, : blk.end],
                    value[:, :, : blk.end],
                    attn_mask=blk.local_mask if local and blk.local_mask is not None else blk.mask,
                    scale=scaling,
                )
                for blk in self.blocks
            ],
        )
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return out.reshape(b, kv_heads, n, group, d).transpose(1, 2).reshape(b, n, heads, d)


#: Fewest recomputed tokens per block, most blocks, and the fewest recomputed tokens that are
#: cut into blocks at all (see :func:`packed_blocks`). Measured on an H200 (8B Llama shape):
#: 509 tokens over 10K slots took 32 ms in one block and 41 ms in 3 blocks on streams (the
#: launches and stream waits outweigh the skipped work); 1,526 tokens took 74 ms in 5 blocks one
#: after the other and 70 ms in 8 on streams; 4,906 over 32K, 381 ms and 320 ms.
MIN_BLOCK_TOKENS = 128
MAX_BLOCKS = 8
SPLIT_FROM = 1024

_STREAMS: dict[Any, list[Any]] = {}


def _side_by_side(device: torch.device, calls: list[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
    """Each call's result. On a GPU, several calls run at once on side streams: one block of
    recomputed tokens has too few query tiles to fill the device (its KV heads times its rows
    over the kernel's tile), and the blocks are independent. The current stream waits for them;
    each result is marked as used by it, so that its memory is not reused by a side stream while
    the current one still reads it."""
    import torch

    if device.type != "cuda" or len(calls) == 1:
        return [call() for call in calls]
    main = torch.cuda.current_stream(device)
    key = (device.index, len(calls))
    if key not in _STREAMS:
        _STREAMS[key] = [torch.cuda.Stream(device) for _ in calls]
    streams = _STREAMS[key]
    outs = []
    for stream, call in zip(streams, calls, strict=True):
        stream.wait_stream(main)  # the queries, keys and masks are written
        with torch.cuda.stream(stream):
            outs.append(call())
    for stream, out in zip(streams, outs, strict=True):
        main.wait_stream(stream)
        out.record_stream(main)
    return outs


def packed_blocks(
    positions: torch.Tensor, chosen: torch.Tensor, group: int, dtype: torch.dtype, window: int | None = None
) -> list[Block]:
    """The blocks of the recomputed slots ``chosen`` (k,) sorted, under ``positions`` (slots,)
    int64 (each slot's logical position; a token sees every slot whose position is ≤ its own,
    and at a local layer only those fewer than ``window`` positions back).

    One run below :data:`SPLIT_FROM` tokens, else up to :data:`MAX_BLOCKS` runs of at least
    :data:`MIN_BLOCK_TOKENS` tokens. Where positions
    grow with the slot (``concat``: always), a run sees only the slots up to its last token's, so
    its attention reads that prefix of the cache and skips the rest: about half the attention
    work when the chosen tokens are spread evenly (the mask alone would only hide it). Elsewhere
    every run reads all slots. One host transfer (the runs' ends)."""
    import torch

    slots, k = int(positions.numel()), int(chosen.numel())
    pos = positions[chosen]
    visible = positions[None, :] <= pos[:, None]  # (k, slots)
    near = None if window is None else visible & (pos[:, None] - positions[None, :] < window)
    runs = 1 if k < SPLIT_FROM else max(1, min(MAX_BLOCKS, k // MIN_BLOCK_TOKENS))
    bounds = [round(i * k / runs) for i in range(runs + 1)]
    monotone = (positions[1:] >= positions[:-1]).all()
    last = pos[torch.tensor(bounds[1:], device=pos.device) - 1]  # each run's largest position
    ends = torch.where(monotone, torch.searchsorted(positions, last, right=True), slots).tolist()
    neg = torch.finfo(dtype).min

    def additive(seen: torch.Tensor, start: int, stop: int, end: int) -> torch.Tensor:
        rows = seen[start:stop, :end].repeat_interleave(group, dim=0)
        return torch.where(rows, 0.0, neg).to(dtype)[None, None]

    blocks = []
    for start, stop, end in zip(bounds[:-1], bounds[1:], ends, strict=True):
        end = min(slots, -(-int(end) // 16) * 16)  # a 16-aligned width: no padding copy in SDPA
        local = None if near is None else additive(near, start, stop, end)
        blocks.append(Block(start, stop, end, additive(visible, start, stop, end), local))
    return blocks


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    job = _JOB.get()
    if job is None:  # the view run outside a blend_attention block: plain eager attention
        eager: Any = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)  # type: ignore[no-any-return]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return job.attend(query, key, value, scale, int(module.layer_idx)), None


@contextmanager
def blend_attention(model: PreTrainedModel, job: AttentionJob) -> Iterator[PreTrainedModel]:
    """Yields the model to run inside the block: a view of ``model`` over the same tensors whose
    own config selects :data:`NAME`, serving ``job`` for the forwards this thread or task runs.
    ``model`` itself is never switched, so its other users never see :data:`NAME`."""
    from transformers import AttentionInterface

    from ragcompress.kv.encode.eager import attention_view

    AttentionInterface.register(NAME, _attention)
    token = _JOB.set(job)
    try:
        yield attention_view(model, NAME)
    finally:
        _JOB.reset(token)
