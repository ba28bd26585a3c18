"""The preallocated KV buffer a fast-path request runs in.

Two regions per layer, both in the (tokens, kv_heads, head_dim) layout that flash attention's
variable-length kernels read without a copy:

* the **context** (capacity, layers, kv_heads, head_dim): shared prefix + chunks, written once
  per request by :mod:`ragcompress.kv.fast.write`, read by every question of the batch. Token
  major, so that a chunk (all layers) is one contiguous block and is written by one kernel;
  a layer's view ``ctx_keys[:, layer]`` is (capacity, kv_heads, head_dim) with a row stride
  that flash attention reads as is;
* the **questions** (layers, max_batch * region, kv_heads, head_dim): one ``region`` of slots
  per concurrent question (its tokens, then the tokens it generates).

For a family with local sliding-window layers (``positions=True``) the buffer also holds each
context slot's logical position, ``ctx_pos`` (capacity,) int64: the window is by position, not
by slot (re-positioned chunks and evicted tokens leave gaps), see
:class:`~ragcompress.kv.fast.attention.LocalWindow`.

Nothing is ever concatenated or reallocated, so the question prefill and decode steps have
static shapes and can be captured as CUDA graphs. Writes past either region raise
:class:`BufferOverflowError` before touching memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.local_layers import LocalLayers

__all__ = ["BufferOverflowError", "StaticKVBuffer"]


class BufferOverflowError(ValueError):
    """A request needs more slots than the static buffer was built with."""


@dataclass(eq=False)
class StaticKVBuffer:
    """Preallocated context + question KV slots for one model.

    ``capacity``: context slots (prefix + kept chunk tokens); ``region``: slots per question
    (question tokens + generated tokens); ``max_batch``: concurrent questions; ``positions``:
    keep each context slot's logical position in ``ctx_pos`` (writers fill it; local
    sliding-window layers read it); ``local``: the local layers, whose writers leave out chunks
    too far back to be seen (:mod:`~ragcompress.kv.fast.local_layers`).
    """

    layers: int
    kv_heads: int
    head_dim: int
    capacity: int
    region: int
    max_batch: int = 1
    dtype: torch.dtype | None = None
    device: torch.device | str = "cpu"
    positions: bool = False
    local: LocalLayers | None = None
    ctx_keys: torch.Tensor = field(init=False, repr=False)
    ctx_values: torch.Tensor = field(init=False, repr=False)
    q_keys: torch.Tensor = field(init=False, repr=False)
    q_values: torch.Tensor = field(init=False, repr=False)
    ctx_len_t: torch.Tensor = field(init=False, repr=False)  # (1,) int32, read by the graphs
    ctx_pos: torch.Tensor = field(init=False, repr=False)  # (capacity,) int64 if positions, else (0,)
    ctx_len: int = field(default=0, init=False)  # slots written (host copy)
    next_position: int = field(default=0, init=False)  # RoPE position of the first question token

    def __post_init__(self) -> None:
        import torch

        for name in ("layers", "kv_heads", "head_dim", "capacity", "region", "max_batch"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        dt = torch.float32 if self.dtype is None else self.dtype
        shape = (self.capacity, self.layers, self.kv_heads, self.head_dim)
        qshape = (self.layers, self.max_batch * self.region, self.kv_heads, self.head_dim)
        self.ctx_keys = torch.zeros(shape, dtype=dt, device=self.device)
        self.ctx_values = torch.zeros(shape, dtype=dt, device=self.device)
        self.q_keys = torch.zeros(qshape, dtype=dt, device=self.device)
        self.q_values = torch.zeros(qshape, dtype=dt, device=self.device)
        self.ctx_len_t = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.ctx_pos = torch.zeros(
            self.capacity if self.positions else 0, dtype=torch.long, device=self.device
        )

    @property
    def nbytes(self) -> int:
        t = (self.ctx_keys, self.ctx_values, self.q_keys, self.q_values, self.ctx_pos)
        return sum(x.numel() * x.element_size() for x in t)

    def reset(self) -> None:
        """Forget the context (slots are overwritten, not cleared: reads stop at ``ctx_len``)."""
        self.ctx_len = 0
        self.next_position = 0
        self.ctx_len_t.zero_()

    def reserve(self, n: int, span: int, what: str = "chunk") -> tuple[int, int]:
        """Claim ``n`` context slots for a chunk spanning ``span`` positions.

        Returns ``(slot, position)``: where its tokens go and the RoPE position its first
        token moves to. Raises :class:`BufferOverflowError` when the context is full.
        """
        if n < 0 or span < n:
            raise ValueError(f"{what}: {n} tokens over a span of {span} positions is not a valid chunk")
        if self.ctx_len + n > self.capacity:
            raise BufferOverflowError(
                f"{what} of {n} tokens does not fit: {self.ctx_len} of {self.capacity} context slots "
                f"are used; build the buffer with capacity ≥ {self.ctx_len + n}"
            )
        slot, pos = self.ctx_len, self.next_position
        self.ctx_len += n
        self.next_position += span
        return slot, pos

    def commit(self) -> None:
        """Publish the host context length to the device (before a prefill reads it)."""
        self.ctx_len_t.fill_(self.ctx_len)

    def place(self, ctx_len: int, next_position: int) -> None:
        """Take a context written elsewhere (a paged engine's pool): ``ctx_len`` slots, the
        question from ``next_position`` on, published to the device in one launch (a
        :meth:`reset` then :meth:`commit` is two, before every placed step)."""
        self.ctx_len, self.next_position = ctx_len, next_position
        self.commit()

    def layer_of(self, keys: torch.Tensor) -> int:
        """Which layer's context ``keys`` (a ``ctx_keys[rows, l]`` view, any first row) is."""
        step = self.kv_heads * self.head_dim * self.ctx_keys.element_size()
        return (keys.data_ptr() - self.ctx_keys.data_ptr()) // step % self.layers

    def context_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the written context's keys and values as views (1, kv_heads, ctx_len,
        head_dim) of the buffer (strided: token-major underneath): writes through them change
        the buffer in place."""
        n = self.ctx_len
        return [
            (self.ctx_keys[:n, i].permute(1, 0, 2)[None], self.ctx_values[:n, i].permute(1, 0, 2)[None])
            for i in range(self.layers)
        ]

    def check_question(self, length: int, new_tokens: int, batch: int) -> None:
        """Raise before a batch of questions would overrun its regions."""
        if batch > self.max_batch:
            raise BufferOverflowError(f"{batch} questions in one batch; the buffer holds {self.max_batch}")
        if length + new_tokens > self.region:
            raise BufferOverflowError(
                f"a question of {length} tokens + {new_tokens} new tokens needs {length + new_tokens} "
                f"slots; each question region has {self.region}"
            )
