"""The per-step tensors the cascade attention reads: :class:`StepMeta` (lengths and segments,
device tensors so one captured graph serves any request) and :class:`LocalWindow` (a local
sliding-window layer's positions). See :mod:`ragcompress.kv.fast.attention` for the shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["LocalWindow", "StepMeta", "window_span"]


@dataclass(frozen=True, eq=False)
class LocalWindow:
    """The window of a local layer for one step: a query at logical position ``q`` sees the keys
    at ``q - size < p``. ``q_pos`` (N,) int64: the step's query positions; ``ctx_pos``
    (capacity,) int64: each context slot's position (``StaticKVBuffer.ctx_pos``); ``span`` (2,)
    int32: :func:`window_span` of the step (the slots any query can see), or None."""

    size: int
    q_pos: torch.Tensor
    ctx_pos: torch.Tensor
    span: torch.Tensor | None = None

    def context_mask(self, capacity: int) -> torch.Tensor:
        """(N, capacity) bool: which context slots each query sees within the window."""
        return (self.q_pos[:, None] - self.ctx_pos[None, :capacity]) < self.size


@dataclass(eq=False)
class StepMeta:
    """Static per-graph metadata: B questions of T (padded) tokens, ``region`` slots each.

    The context is cut into ``splits`` segments that flash runs as separate sequences (split-KV,
    as in flash-decoding): with few query tokens one sequence would give one thread block per
    head, a fraction of the GPU. :meth:`refresh` cuts the *filled* context ``[0, ctx_len)``
    into equal segments on the device, so every segment has work whatever the context length
    (cutting the whole capacity left most segments empty at short contexts: 2 of 33 busy at 1K
    in a 32K buffer).
    """

    batch: int
    qlen: int
    region: int
    capacity: int
    ctx_len: torch.Tensor  # (1,) int32, shared with the buffer
    q_used: torch.Tensor  # (B,) int32
    splits: int = 1
    group: int = 1  # query heads per KV head: folded into the query rows of the context pass
    max_seg: int = field(init=False)  # longest segment (host int: flash's max_seqlen_k)
    cu_q_ctx: torch.Tensor = field(init=False)  # [0, NG, 2NG, .., S*NG]
    cu_k_ctx: torch.Tensor = field(init=False)  # segment starts, then capacity
    seg_start: torch.Tensor = field(init=False)  # (S,) int32, set by refresh()
    seg_len: torch.Tensor = field(init=False)  # (1,) int32 keys per segment, set by refresh()
    ctx_used: torch.Tensor = field(init=False)  # (S,) int32, set by refresh()
    cu_q_own: torch.Tensor = field(init=False)  # [0, T, 2T, ..]
    cu_k_own: torch.Tensor = field(init=False)  # [0, R, 2R, ..]
    _iota: torch.Tensor = field(init=False, repr=False)  # [0, 1, .., S-1]

    def __post_init__(self) -> None:
        import torch

        dev = self.q_used.device
        b, t, r = self.batch, self.qlen, self.region
        splits = max(1, min(self.splits, self.capacity))
        seg = -(-self.capacity // splits)
        starts = [min(i * seg, self.capacity) for i in range(splits + 1)]
        self.splits = splits
        self.max_seg = seg

        def i32(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32, device=dev)

        self.cu_q_ctx = i32([i * b * t * self.group for i in range(splits + 1)])
        self.cu_k_ctx = i32(starts)
        self.seg_start = i32(starts[:-1])
        self.seg_len = i32([seg])
        self.ctx_used = torch.zeros(splits, dtype=torch.int32, device=dev)
        self._iota = i32(list(range(splits)))
        self.cu_q_own = i32([i * t for i in range(b + 1)])
        self.cu_k_own = i32([i * r for i in range(b + 1)])

    def refresh(self) -> None:
        """Segments of ``ceil(ctx_len / splits)`` keys over the filled context: starts and
        valid lengths from ``ctx_len`` (device-side, graph-safe; never longer than
        ``max_seg`` since ``ctx_len`` ≤ capacity)."""
        import torch

        n = self.splits
        self.seg_len.copy_(torch.div(self.ctx_len + (n - 1), n, rounding_mode="floor"))
        self.seg_start.copy_(self._iota * self.seg_len)
        self.cu_k_ctx[:n].copy_(self.seg_start)
        self.ctx_used.copy_(torch.minimum((self.ctx_len - self.seg_start).clamp_min(0), self.seg_len))


def window_span(
    q_pos: torch.Tensor, ctx_pos: torch.Tensor, ctx_len: torch.Tensor, window: int
) -> torch.Tensor:
    """(2,) int32 ``[lo, hi)``: the first and one past the last of the filled slots (``ctx_len``
    (1,) int32) whose position the earliest query in ``q_pos`` (N,) int64 sees (``q - p <
    window``); no later query sees a slot outside it (context positions precede the
    question's). ``[x, x)`` when it sees none. Device ops only: graph-safe, once per step."""
    import torch

    slots = torch.arange(ctx_pos.numel(), device=ctx_pos.device)
    seen = (q_pos.min() - ctx_pos < window) & (slots < ctx_len.to(slots.dtype))
    lo = torch.where(seen, slots, ctx_pos.numel()).amin()
    hi = torch.where(seen, slots + 1, 0).amax()
    return torch.stack([lo, torch.maximum(hi, lo)]).to(torch.int32)
