"""``bench ttft --profile``'s attribution: every kernel of a real H200 profile in one part of the
request, the parts' times adding up, and each part held to its own floor (the numbers measured
on the GPU come from a committed record; nothing here needs one)."""

from __future__ import annotations

import re

import pytest
from ragcompress_bench.records import RESULTS
from ragcompress_bench.ttft_profile import PARTS, attribute, part_floors, profile_lines
from ragcompress_bench.ttft_shapes import SHAPES
from transformers import AutoConfig


def _placed_kernels_1k() -> list[tuple[str, float, float]]:
    """The placed request's kernels at 1K from ``ttft_placed_host2_h200/paged_gap.txt``: (name,
    µs a request, launches a request)."""
    text = (RESULTS / "ttft_placed_host2_h200" / "paged_gap.txt").read_text()
    table = text.split("placed: top kernels", 1)[1].split("##", 1)[0]
    rows = re.findall(r"^\| `(.+?)` \| (\d+) \| (\d+) \|", table, flags=re.M)
    return [(name, float(us), float(n)) for name, us, n in rows]


def _llama() -> object:
    model_type, fields = SHAPES["llama3-8b"]
    return AutoConfig.for_model(model_type, **fields)


def test_every_kernel_of_a_real_profile_falls_in_one_part_and_the_parts_add_up() -> None:
    kernels = _placed_kernels_1k()
    assert len(kernels) >= 10
    floors = part_floors(_llama(), 1024, 32, 15_010_000_000, 4.2e12, 7.5e14)
    rows = {r["part"]: r for r in attribute(kernels, floors)}
    assert list(rows) == [p.name for p in PARTS]
    assert sum(r["ms"] for r in rows.values()) == pytest.approx(sum(us for _, us, _ in kernels) / 1e3)
    weights = rows["weight products"]
    # the skinny GEMMs (128 a request) and cuBLAS's output layer (1)
    assert weights["launches"] == 129 and weights["ms"] == pytest.approx((3840 + 245) / 1e3)
    assert weights["x_floor"] == pytest.approx(weights["ms"] / floors["weights"], rel=1e-3)
    assert rows["context attention"]["launches"] == 32 and rows["context attention"]["x_floor"] > 1
    assert rows["own pass + merge"]["launches"] == 32 and rows["norms"]["launches"] == 65
    for name in ("own pass + merge", "RoPE + K/V write", "act·mul", "norms"):
        assert rows[name]["floor_ms"] is None and rows[name]["us_a_launch"] > 0  # launch-bound


def test_the_context_floor_is_the_longer_of_its_bytes_and_its_flops() -> None:
    cfg = _llama()
    kv = 32 * 2 * 8 * 128 * 2 * 10240  # layers x (K, V) x KV heads x channels x bf16 x tokens
    flops = 4 * 32 * 32 * 128 * 32 * 10240  # question tokens x heads x channels x layers x keys
    fast_math = part_floors(cfg, 10240, 32, 10**9, 4e12, 1e18)
    assert fast_math["context"] == pytest.approx(kv / 4e12 * 1e3)
    assert fast_math["weights"] == pytest.approx(10**9 / 4e12 * 1e3)
    slow_math = part_floors(cfg, 10240, 32, 10**9, 4e12, 1e12)
    assert slow_math["context"] == pytest.approx(flops / 1e12 * 1e3)


def test_the_report_shows_a_profile_only_where_the_run_had_one() -> None:
    assert profile_lines({}) == [] and profile_lines({"profile": None}) == []
    parts = attribute(_placed_kernels_1k(), {"weights": 3.6, "context": 0.03})
    top = [{"kernel": "_skinny_kernel", "us": 3840.0, "launches": 128.0}]
    profile = {"context_tokens": 1024, "floor_ms": 3.6, "kernels_ms": 4.9, "parts": parts, "top_kernels": top}
    row = {"context_tokens": 1024, "ragcompress_paged_ms": 5.0, "paged_load_host_ms": 0.06}
    text = "\n".join(profile_lines({"profile": [profile], "rows": [row]}))
    assert all(f"| {p.name} | " in text for p in PARTS) and "| `_skinny_kernel` | 3840.0 | 128.0 |" in text
    # the wall and host times are the same context's bench columns, timed before any profiling
    assert "placed request 5.0 ms (wall - kernels: 0.1 ms; the placement's host time 0.06 ms)" in text
    alone = "\n".join(profile_lines({"profile": [profile]}))  # a run without the paged columns
    assert "placed request — ms (wall - kernels: — ms" in alone
