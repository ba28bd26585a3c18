"""Does the int4 pool's dense prefix matter? The packaged SmolLM2 reader on the CPU, the packaged
Warsaw questions, each over its gold passage and the next two (and the three reversed): greedy
answers of the eager KV path (knorm 0.5 + int4 chunks in the pool's grouping, its prefix dense)
against the fast engine reading the chunks from an int4 pool with the prefix dense (the
library) and with the prefix quantized into the int4 pool like any chunk (the first version).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$PWD python3 benchmarks/results/int4_pool_prefix_cpu/prefix_ab.py

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import torch

from ragcompress.corpus import load_passages, load_questions
from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.kv.fast import Int4ChunkPool, PagedPlacement
from ragcompress.kv.fast.answer import FastKVAnswerer
from ragcompress.kv.fast.pool import ChunkPool, RequestLease
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.quantize import QuantizePress


class PrefixInt4Pool(Int4ChunkPool):
    """The first version: the prefix quantized into the int4 pool with the chunks (its dense
    table left empty)."""

    def lease_request(self, items: Any) -> RequestLease:
        lease = ChunkPool.acquire(self, items)
        return RequestLease([(self, lease)], [[], list(enumerate(lease.entries))])


def main() -> None:
    gen = Generator(max_new_tokens=16)
    presses = (KnormPress(ratio=0.5), QuantizePress(bits=4, group_size=32))  # 64-channel heads
    passages = {p.id: p.text for p in load_passages()}
    ids = list(passages)
    eager = KVAnswerer.from_generator(gen, presses=presses)
    fast = {
        name: FastKVAnswerer.from_generator(
            gen, presses=presses, capacity=4096, max_question=64,
            placement=PagedPlacement(pool_tokens=8192, block_size=32, storage=storage),
        )
        for name, storage in (("prefix dense (library)", Int4ChunkPool), ("prefix int4", PrefixInt4Pool))
    }  # fmt: skip
    same = {name: 0 for name in fast}
    first = {name: 0 for name in fast}
    cases = 0
    t0 = time.perf_counter()
    for q in load_questions():
        i = ids.index(q.passage_id)
        chosen = [passages[ids[(i + j) % len(ids)]] for j in range(3)]
        for order in (chosen, chosen[::-1]):
            want = eager.answer(q.question, order).token_ids
            cases += 1
            for name, answerer in fast.items():
                got = answerer.answer(q.question, order).token_ids
                same[name] += got == want
                first[name] += got[:1] == want[:1]
    print(f"SmolLM2-135M-Instruct (packaged), fp32, CPU ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}; {cases} cases in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print("\n| fast engine, int4 pool | same 16-token greedy answer as the eager path | same first token |")
    print("|---|---|---|")
    for name in fast:
        print(f"| {name} | {same[name]}/{cases} | {first[name]}/{cases} |")


if __name__ == "__main__":
    main()
