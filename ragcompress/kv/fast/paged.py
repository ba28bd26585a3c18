"""Paged attention: a request's queries read its chunks in place in the chunk pool.

The context of a request is a :class:`BlockTable`, one row per pool block it reads (block id,
slots filled, its chunk's position delta), in device memory; :class:`PagedCascade` attends
over those blocks, each with the queries rotated by ``-delta`` (``q . R(delta) k =
(R(-delta) q) . k``, so no key is rewritten), and over the question's own slots, and merges
the partials by log-sum-exp as :class:`~ragcompress.kv.fast.attention.FlashCascade` does. On
CUDA in fp16/bf16 the context pass is a Triton kernel (:mod:`~ragcompress.kv.fast._paged`) and
the own pass flash; elsewhere :func:`paged_context_reference` and
:func:`~ragcompress.kv.fast.attention.own_pass_reference`, in fp32 torch.

The table, its count included, is written before a step runs (:meth:`BlockTable.write`: one
host-to-device copy through pinned memory) and read by the step on the device, so one captured
graph per step shape serves every request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from ragcompress.kv.fast.attention import CascadeAttention, merge, own_pass_reference
from ragcompress.kv.fast.buffer import BufferOverflowError
from ragcompress.kv.fast.waves import PAGED, Tiling
from ragcompress.kv.fast.write import triton_available

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ragcompress.kv.fast.attention import LocalWindow, StepMeta

__all__ = ["BlockTable", "PagedCascade", "Rows", "paged_context_reference", "per_question"]

# a block table's rows: an (n, 3) int32 array of ``(block, used, delta)``, or a sequence of triples
Rows: TypeAlias = "np.ndarray | Sequence[tuple[int, int, int]]"


@dataclass(eq=False)
class BlockTable:
    """``rows`` (1 + max_blocks, 3) int32 on ``device``: row 0 ``[count, 0, 0]``, then one row
    ``[block, used, delta]`` per block the request reads, in context order. ``questions`` > 1:
    ``rows`` (questions, 1 + max_blocks, 3), one such table per question of a ragged batch
    (each question its own chunks)."""

    max_blocks: int
    device: torch.device | str = "cpu"
    questions: int = 1
    rows: torch.Tensor = field(init=False, repr=False)
    # made once, with the table: the staging rows (pinned on CUDA) and their numpy view, the
    # rows as (questions, 1 + max_blocks, 3), and the event of the last copy out of the staging
    # (None off CUDA). A publish runs before every placed step, and each torch call it makes
    # costs µs of host time
    _stage: torch.Tensor = field(init=False, repr=False)
    _host: np.ndarray = field(init=False, repr=False)
    _rows3: torch.Tensor = field(init=False, repr=False)
    _copied: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import torch

        if self.max_blocks <= 0 or self.questions <= 0:
            raise ValueError(
                f"max_blocks and questions must be positive, got {self.max_blocks}, {self.questions}"
            )
        shape = (1 + self.max_blocks, 3) if self.questions == 1 else (self.questions, 1 + self.max_blocks, 3)
        self.rows = torch.zeros(shape, dtype=torch.int32, device=self.device)
        cuda = self.rows.device.type == "cuda"
        stage = torch.empty(self.rows.numel(), dtype=torch.int32)
        self._stage = stage.pin_memory() if cuda else stage
        self._host = self._stage.numpy()
        self._rows3 = self.rows.view(-1, 1 + self.max_blocks, 3)
        self._copied = torch.cuda.Event() if cuda else None

    def write(self, blocks: Rows) -> None:
        """Publish a request's ``(block, used, delta)`` rows: (n, 3) int32 array or sequence of
        triples (raises :class:`~ragcompress.kv.fast.buffer.BufferOverflowError` past
        ``max_blocks``). On CUDA the copy is queued without blocking the host, after the work
        already queued."""
        if self.questions != 1:
            raise ValueError("a table of several questions is written with write_ragged()")
        self._publish([blocks])

    def write_ragged(self, tables: Sequence[Rows]) -> None:
        """Publish one table of ``(block, used, delta)`` rows per question (at most
        ``questions``; the rest keep their rows, which no step of fewer questions reads), in
        one copy. A table of one question is the plain table of :meth:`write`."""
        if not 0 < len(tables) <= self.questions:
            raise ValueError(
                f"write_ragged takes 1..{self.questions} tables of a per-question table, got {len(tables)}"
            )
        self._publish(tables)

    def _publish(self, tables: Sequence[Rows]) -> None:
        import numpy as np

        arrays = [np.asarray(t, dtype=np.int32).reshape(-1, 3) for t in tables]
        longest = max(len(a) for a in arrays)
        if longest > self.max_blocks:
            raise BufferOverflowError(
                f"the request reads {longest} pool blocks; the block table holds max_blocks={self.max_blocks}"
            )
        n, width = len(arrays), 1 + longest
        if self._copied is not None:
            self._copied.synchronize()  # the previous copy must have left the staging rows
        # the rows are assembled in place by numpy, compact (n, width, 3), in the staging rows;
        # rows past a table's count are left as they were: no kernel reads them
        view = self._host[: n * width * 3].reshape(n, width, 3)
        for i, a in enumerate(arrays):
            view[i, 0] = (len(a), 0, 0)
            view[i, 1 : 1 + len(a)] = a
        # one copy, queued on CUDA without blocking the host
        self._rows3[:n, :width].copy_(self._stage[: n * width * 3].view(n, width, 3), non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def clear(self) -> None:
        """No block: the context is empty (a step then attends to its own slots only)."""
        self._publish([[]] * self.questions)

    def question_rows(self, batch: int) -> torch.Tensor:
        """The rows a step of ``batch`` questions reads: the one table, or the first ``batch``
        questions' tables (batch, 1 + max_blocks, 3)."""
        return self.rows if self.questions == 1 else self.rows[:batch]


@dataclass(eq=False)
class PagedCascade(CascadeAttention):
    """Attention over the blocks of ``table`` in the pool layer view the step passes as the
    context (``ctx_k``/``ctx_v`` (pool slots, kv_heads, D)) + the question's own slots.
    ``inv_freq`` (D // 2,) fp32: the RoPE table every layer shares; ``splits``: context splits
    of the kernel (None: one wave of ``tiling``'s programs); ``tiling``: how the kernel's
    programs cut the work."""

    table: BlockTable
    inv_freq: torch.Tensor
    block_size: int
    splits: int | None = None
    tiling: Tiling = PAGED

    def __call__(
        self,
        q: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        own_k: torch.Tensor,
        own_v: torch.Tensor,
        meta: StepMeta,
        scale: float,
        *,
        window: LocalWindow | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """(B*T, heads, head_dim) in ``q``'s dtype."""
        import torch

        self._global_only(window, softcap)
        d, table = q.shape[-1], self.table.question_rows(meta.batch)
        if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and self._kernel_runs(d)):
            o_a, lse_a = per_question(
                lambda qb, tb: paged_context_reference(
                    qb, ctx_k, ctx_v, tb, self.inv_freq, self.block_size, scale
                ),
                q,
                table,
            )
            o_b, lse_b = own_pass_reference(q, own_k, own_v, meta, scale)
            return merge(o_a, lse_a, o_b, lse_b).to(q.dtype)
        from ragcompress.kv.fast._merge import merge_with_own
        from ragcompress.kv.fast._paged import paged_context

        sp = self.splits or self._auto_splits(q, table, ctx_k.shape[1])
        o_a, lse_a = paged_context(
            q, ctx_k, ctx_v, table, self.inv_freq, self.block_size, sp, scale, tiling=self.tiling
        )
        # empty splits carry lse -inf and o 0: every split takes part in the merge
        return merge_with_own(o_a, lse_a, None, q, own_k, own_v, meta, scale)

    @staticmethod
    def _global_only(window: LocalWindow | None, softcap: float | None) -> None:
        if window is not None or softcap is not None:
            raise ValueError("paged attention has no local window or soft-cap (dense, global layers only)")

    def _kernel_runs(self, d: int) -> bool:
        bs = self.block_size
        return d >= 32 and d & (d - 1) == 0 and 16 <= bs <= 128 and bs & (bs - 1) == 0 and triton_available()

    def _auto_splits(self, q: torch.Tensor, table: torch.Tensor, kv_heads: int) -> int:
        """One wave of the programs the kernel launches for ``q`` over ``table`` (per question
        in a ragged batch, :func:`~ragcompress.kv.fast._paged.question_tables`)."""
        import torch

        from ragcompress.kv.fast._paged import question_tables

        nq, qg, _ = question_tables(q, table, q.shape[1] // kv_heads)
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        return self.tiling.splits(sms, qg, kv_heads, self.table.max_blocks, questions=nq)


def per_question(
    run: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    q: torch.Tensor,
    table: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``run(q, table)`` (a reference context pass: (o (N, heads, D), lse (N, heads))) over one
    table (1 + max_blocks, 3), or per question over (B, 1 + max_blocks, 3) tables, question
    ``b`` holding the query rows ``[b * N / B, (b + 1) * N / B)``."""
    import torch

    if table.dim() == 2:
        return run(q, table)
    parts = [run(qb, tb) for qb, tb in zip(q.chunk(table.shape[0]), table, strict=True)]
    return torch.cat([o for o, _ in parts]), torch.cat([lse for _, lse in parts])


def paged_context_reference(
    q: torch.Tensor,
    pool_k: torch.Tensor,
    pool_v: torch.Tensor,
    table: torch.Tensor,
    inv_freq: torch.Tensor,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The context pass in fp32 torch: ``(o (N, heads, D), lse (N, heads))``, ``-inf`` / 0 for an
    empty table. Each table entry's keys are scored against the queries rotated by its
    ``-delta`` (the kernel's algorithm, not a re-rotation of the keys); one softmax over every
    entry's filled slots. No host sync (capturable); memory ~ entries x N x heads x D, a
    reference, not a long-context path."""
    import torch

    from ragcompress.models.rope import cos_sin, rotate_by

    n, heads, d = q.shape
    kvh = pool_k.shape[1]
    g = heads // kvh
    rows = table[1:].long()  # (E, 3): every row; the ones past the count are masked
    e = rows.shape[0]
    live = torch.arange(e, device=q.device) < table[0, 0]
    j = torch.arange(block_size, device=q.device)
    slot = (rows[:, :1] * block_size + j).clamp(0, pool_k.shape[0] - 1)  # (E, BS)
    ok = live[:, None] & (j[None, :] < rows[:, 1:2])  # (E, BS)
    k = pool_k[slot].float()  # (E, BS, kvh, d)
    v = pool_v[slot].float()
    cos, sin = cos_sin(-rows[:, 2], inv_freq.to(q.device))  # (E, d)
    qe = rotate_by(q.float()[None], cos[:, None, None], sin[:, None, None])  # (E, N, heads, d)
    qe = qe.view(e, n, kvh, g, d)
    s = torch.einsum("enkgd,ebkd->nkgeb", qe, k) * scale  # (N, kvh, g, E, BS)
    s = s.masked_fill(~ok, float("-inf")).reshape(n, kvh, g, e * block_size)
    lse = torch.logsumexp(s, dim=-1)  # (N, kvh, g)
    p = torch.exp(s - lse.clamp_min(-1e30)[..., None])
    o = torch.einsum("nkgs,skd->nkgd", p, v.reshape(e * block_size, kvh, d))
    return o.reshape(n, heads, d), lse.reshape(n, heads)
