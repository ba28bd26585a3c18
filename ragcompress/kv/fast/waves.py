"""How a context pass (contiguous or paged) cuts its work into programs: rows a program holds and
splits of the context that fill the device in exactly one wave. Plain Python, so the engine's
shape planning and the Triton launchers share it without importing each other."""

from __future__ import annotations

__all__ = ["one_wave_splits", "rows_per_program"]


def rows_per_program(rows: int) -> int:
    """Folded query rows a context-pass program holds: 64 up to 64 rows, else 128 (8 warps)."""
    return 64 if rows <= 64 else 128


def one_wave_splits(sms: int, rows: int, kv_heads: int, most: int) -> int:
    """Splits of a context pass over ``rows`` folded query rows that give each of ``sms`` SMs
    one program, at most ``most``, at least one. A second, partial wave costs: the paged pass
    at 32K ran 1.5x slower over 17 splits than over 16 (``results/ttft_paged_v2_h200/``)."""
    programs = kv_heads * -(-rows // rows_per_program(rows))
    return max(1, min(sms // programs, most))
