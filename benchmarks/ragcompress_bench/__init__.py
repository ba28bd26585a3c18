"""Benchmarks: real QA data loaders, fidelity metrics, and runners that put every compressor
next to the anchors users would otherwise pick, on the same inputs in one run.

Entry points: ``ragcompress bench text`` (:func:`ragcompress_bench.text.main`) and
``benchmarks/bench_text.py``. Optional dependencies are the ``bench`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
