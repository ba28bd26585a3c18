"""How a context pass (contiguous or paged) cuts its work into programs: rows a program holds,
warps, pipeline stages, and splits of the context that fill the device in one wave. Plain
Python, so the engine's shape planning and the Triton launchers share it without importing
each other."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONTIGUOUS", "PAGED", "PAGED_INT4", "Tiling"]


@dataclass(frozen=True)
class Tiling:
    """One context pass's work split.

    ``rows``: the most folded query rows a program holds (64 or 128; fewer rows than 64 get a
    64-row program); ``per_sm``: programs each SM holds at once (a wave is ``per_sm`` x SMs
    programs); ``stages``: the key loop's software-pipeline depth. A program of 128 rows runs 8
    warps (two warpgroups), one of 64 runs 4."""

    rows: int = 128
    per_sm: int = 1
    stages: int = 3

    def __post_init__(self) -> None:
        if self.rows not in (64, 128) or self.per_sm < 1 or self.stages < 1:
            raise ValueError(f"Tiling needs rows 64 or 128, per_sm >= 1 and stages >= 1, got {self}")

    def block_m(self, rows: int) -> int:
        """Folded rows a program holds for a pass over ``rows`` folded rows."""
        return 64 if rows <= 64 else self.rows

    @staticmethod
    def warps(block_m: int) -> int:
        """Warps of a ``block_m``-row program: a warpgroup per 64 rows."""
        return 8 if block_m == 128 else 4

    def splits(self, sms: int, rows: int, kv_heads: int, most: int, questions: int = 1) -> int:
        """Splits of the context that give ``sms`` SMs ``per_sm`` programs each, at most
        ``most``, at least one, for ``questions`` that each hold ``rows`` folded rows in
        programs of their own (a ragged batch; one: the whole batch's rows share programs). A
        second, partial wave costs: the paged pass at 32K ran 1.5x slower over 17 splits than
        over 16 (``results/ttft_paged_v2_h200/``)."""
        programs = kv_heads * questions * -(-rows // self.block_m(rows))
        return max(1, min(self.per_sm * sms // programs, most))


# The contiguous pass: 128-row programs, one an SM, 3 stages (results/ttft_context_kernel_h200/).
CONTIGUOUS = Tiling()
# The paged pass: 64-row programs of one warpgroup, two an SM, so one program's math covers the
# other's table-row and block loads. One layer on an H200: 32K 66.8 -> 61.0 µs (Llama-3-8B),
# 73.1 -> 58.9 (Qwen2.5-7B); 128K 316.8 -> 254.2 and 339.1 -> 238.1
# (results/ttft_paged_sweep_h200/).
PAGED = Tiling(rows=64, per_sm=2)
# The int4 (and int8) paged pass: bound by its dequantization arithmetic, so the contiguous
# split; two 64-row programs an SM ran it 17-26% slower (results/ttft_context_sweep_h200/).
PAGED_INT4 = Tiling()
