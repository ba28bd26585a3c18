"""How host chunks' bytes reach the GPU fastest, per layer range (issue #16's host tier at 32K).

The streamer copies each request's host chunks range by range: at 32K, 64 chunks x 9 ranges =
576 copy-engine copies, which took 10.9 ms against 8.9 for one copy of the same bytes
(``../ttft_host_split_h200/``); at 32K the copies, not the step, set the first token. This script
measures, in one process, on the Llama-3-8B shape with kvzip-sized chunks (knorm 0.6 + int4/64,
pinned; ``host_ab.chunks_for``):

* copies alone, each queued behind a 20 ms device sleep so the host's queuing is off the clock
  (the device's own time): the streamer's pieces through ``torch._foreach_copy_``; one copy per
  chunk; one copy of all bytes; the pieces through ``cudaMemcpyBatchAsync`` (CUDA >= 12.8, called
  through ctypes, with and without the prefer-overlap-with-compute flag); and the pieces through
  a Triton kernel that loads the pinned host bytes itself (unified addressing) with 8-132
  programs, one launch per range;
* end to end (load + first token, median of CUDA events, runs alternating over two rounds): the
  chunks packed on the GPU, the streamer as it is, and the streamer with its copies done by the
  kernel on a high-priority stream (8, 16, 32 programs).

    python3 benchmarks/results/ttft_host_copy_h200/host_copy.py [--contexts 10240,32768]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parents[1] / "ttft_host_split_h200"))
from host_ab import chunks_for, engine
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock, alternating

from ragcompress.kv.fast import HostChunk, QuantizedPackedChunk
from ragcompress.kv.fast.stream import HostStream

TILE = 16384  # int32 words (64 KiB) per tile: a program's unit of work
BLOCK = 8192  # words per load: 64 per thread at 4 warps, so a program keeps 32 KiB in flight


@triton.jit
def _uva_copy(base, dst, tiles, ntiles, TILE: tl.constexpr, BLOCK: tl.constexpr):
    """Copy tiles (ntiles, 3) int64 [source word offset from ``base``, destination word offset
    in ``dst``, words] with a grid of persistent programs; sources may be pinned host memory."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    for t in range(pid, ntiles, nprog):
        src0 = tl.multiple_of(tl.load(tiles + t * 3), 4)
        dst0 = tl.multiple_of(tl.load(tiles + t * 3 + 1), 4)
        n = tl.load(tiles + t * 3 + 2)
        for i in tl.static_range(0, TILE, BLOCK):
            offs = i + tl.arange(0, BLOCK)
            m = offs < n
            x = tl.load(base + src0 + offs, mask=m)
            tl.store(dst + dst0 + offs, x, mask=m)


def tile_rows(pieces: list[tuple[int, int, int]], base_ptr: int) -> np.ndarray:
    """(tiles, 3) int64 [source word offset from ``base_ptr``, destination word offset, words] of
    (source address, destination byte offset, bytes) pieces, cut into tiles of ``TILE`` words."""
    p = np.asarray(pieces, dtype=np.int64).reshape(-1, 3)
    assert not (p[:, 0] % 16).any() and not (p[:, 1] % 16).any() and not (p[:, 2] % 4).any()
    src, dst, words = (p[:, 0] - base_ptr) // 4, p[:, 1] // 4, p[:, 2] // 4
    n = -(-words // TILE)
    idx = np.repeat(np.arange(len(p)), n)
    off = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)) * TILE
    return np.stack([src[idx] + off, dst[idx] + off, np.minimum(TILE, words[idx] - off)], axis=1)


class Batch:
    """``cudaMemcpyBatchAsync`` through ctypes (the runtime torch loaded)."""

    def __init__(self) -> None:
        with open("/proc/self/maps") as maps:
            path = next(line.split()[-1] for line in maps if "libcudart.so" in line)
        self.rt = ctypes.CDLL(path)
        v = ctypes.c_int()
        self.rt.cudaRuntimeGetVersion(ctypes.byref(v))
        self.version = v.value
        self.fn = self.rt.cudaMemcpyBatchAsync

    def __call__(self, dsts: list[int], srcs: list[int], sizes: list[int], flags: int) -> int:
        n = len(dsts)

        class Loc(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]

        class Attr(ctypes.Structure):
            _fields_ = [("order", ctypes.c_int), ("src", Loc), ("dst", Loc), ("flags", ctypes.c_uint)]

        attr = Attr(1, Loc(2, 0), Loc(1, torch.cuda.current_device()), flags)  # stream order, host -> device
        d = (ctypes.c_void_p * n)(*dsts)
        s = (ctypes.c_void_p * n)(*srcs)
        z = (ctypes.c_size_t * n)(*sizes)
        idx = (ctypes.c_size_t * 1)(0)
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        if self.version >= 13000:
            return int(
                self.fn(d, s, z, ctypes.c_size_t(n), ctypes.byref(attr), idx, ctypes.c_size_t(1), stream)
            )
        fail = ctypes.c_size_t(0)
        return int(
            self.fn(
                d,
                s,
                z,
                ctypes.c_size_t(n),
                ctypes.byref(attr),
                idx,
                ctypes.c_size_t(1),
                ctypes.byref(fail),
                stream,
            )
        )


def device_ms(queue: Any, repeats: int = 7) -> float:
    """Device ms of ``queue()``'s work, queued behind a 20 ms sleep (host queuing off the clock)."""
    times = []
    for _ in range(repeats + 2):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(40_000_000)
        a.record()
        queue()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return round(float(np.median(times[2:])), 3)


class KernelFetch(HostStream):
    """The streamer with each range's copies done by :func:`_uva_copy` (``programs`` programs) on
    a high-priority stream instead of the copy engine; the tile tables are built and uploaded at
    load (before the step is queued), as the gather tables are."""

    programs = 16

    def stream(self, entries, rotary):  # type: ignore[no-untyped-def]
        super().stream(entries, rotary)
        plan = self._plan
        if plan is None or not self.cuda:
            return
        dev = self.buffer.ctx_keys.device
        if not getattr(self, "_hp", False):
            self.copier = torch.cuda.Stream(device=dev, priority=-1)
            self._base = torch.empty(64, dtype=torch.int32, device=dev)
            self._hp = True
        per_range = []
        for a, b in self.ranges:
            pieces = [
                (c.data.data_ptr() + a * c.layer_bytes, s + a * c.layer_bytes, (b - a) * c.layer_bytes)
                for c, s in zip(plan.chunks, plan.stages, strict=True)
            ]
            per_range.append(tile_rows(pieces, self._base.data_ptr()))
        bounds = np.cumsum([0] + [len(r) for r in per_range])
        rows = torch.from_numpy(np.concatenate(per_range)).pin_memory().to(dev, non_blocking=True)
        self._rows = [rows[bounds[i] : bounds[i + 1]] for i in range(len(per_range))]
        self._rows_ready = torch.cuda.Event()
        self._rows_ready.record(torch.cuda.current_stream(dev))

    def copies(self, chunks, stages):  # type: ignore[no-untyped-def]
        self.copier.wait_event(self._rows_ready)
        for r in self._rows:
            r.record_stream(self.copier)
        return self._rows

    def fetch(self, copies, i):  # type: ignore[no-untyped-def]
        rows = copies[i]
        words = self.staging.view(torch.int32)
        _uva_copy[(self.programs,)](
            self._base, words, rows, rows.shape[0], TILE=TILE, BLOCK=BLOCK, num_warps=4
        )
        return self.staging


def copies_alone(host: list[HostChunk], hs: HostStream) -> dict[str, Any]:
    stages = hs.stages(host)
    staging = hs.staging
    assert staging is not None
    pieces = hs.copies(host, stages)
    out: dict[str, Any] = {"pieces": sum(len(d) for d, _ in pieces)}
    total = stages[-1] + host[-1].nbytes

    def foreach() -> None:
        for dst, src in pieces:
            torch._foreach_copy_(dst, src, non_blocking=True)

    out["foreach_pieces_ms"] = device_ms(foreach)
    foreach()
    torch.cuda.synchronize()
    want = staging[:total].clone()

    def whole() -> None:
        torch._foreach_copy_(
            [staging[s : s + c.nbytes] for c, s in zip(host, stages, strict=True)],
            [c.data for c in host],
            non_blocking=True,
        )

    out["per_chunk_ms"] = device_ms(whole)
    one = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    out["one_copy_ms"] = device_ms(lambda one=one: staging[:total].copy_(one, non_blocking=True))
    del one
    try:
        batch = Batch()
        out["cudart"] = batch.version
        lists = [
            ([d.data_ptr() for d in dst], [x.data_ptr() for x in src], [x.numel() for x in src])
            for dst, src in pieces
        ]
        for flags in (0, 1):
            errs: list[int] = []

            def batched(flags: int = flags, errs: list[int] = errs) -> None:
                for d, s, z in lists:
                    errs.append(batch(d, s, z, flags))

            staging[:total].zero_()
            out[f"batch_flags{flags}_ms"] = device_ms(batched)
            torch.cuda.synchronize()
            out[f"batch_flags{flags}_errors"] = sorted(set(errs))
            out[f"batch_flags{flags}_exact"] = bool(torch.equal(staging[:total], want))
    except Exception as e:
        out["batch_error"] = f"{type(e).__name__}: {e}"[:200]
    base = torch.empty(64, dtype=torch.int32, device=staging.device)
    words = staging.view(torch.int32)
    ranges = []
    for a, b in hs.ranges:
        pcs = [
            (c.data.data_ptr() + a * c.layer_bytes, s + a * c.layer_bytes, (b - a) * c.layer_bytes)
            for c, s in zip(host, stages, strict=True)
        ]
        ranges.append(torch.from_numpy(tile_rows(pcs, base.data_ptr())).to(staging.device))
    for programs in (8, 16, 32, 66, 132):

        def kernel(programs: int = programs) -> None:
            for rows in ranges:
                _uva_copy[(programs,)](base, words, rows, rows.shape[0], TILE=TILE, BLOCK=BLOCK, num_warps=4)

        staging[:total].zero_()
        out[f"kernel_{programs}_ms"] = device_ms(kernel)
        torch.cuda.synchronize()
        out[f"kernel_{programs}_exact"] = bool(torch.equal(staging[:total], want))
    out["host_mb"] = round(total / 1e6, 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="10240,32768")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--copies-only", action="store_true", help="skip the end-to-end requests")
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model("llama3-8b", "cuda", torch.bfloat16)
    clock = Clock(torch.device("cuda"), 3, 10)
    from ragcompress.kv.fast import FastGenerator

    contexts = [int(c) for c in args.contexts.split(",")]
    base = FastGenerator(model, capacity=max(contexts), max_question=32, max_new_tokens=1, buckets=(32,))
    question = torch.randint(100, model.config.vocab_size, (32,)).tolist()
    print(
        f"# {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True
    )
    for ctx in contexts:
        prefix, chunks = chunks_for(model, ctx)
        gpu = [QuantizedPackedChunk.from_chunk(c) for c in chunks]
        host = [HostChunk.from_chunk(c.to("cpu"), model.dtype) for c in chunks]
        del chunks
        copy = engine(model, base)
        # on a stream of its own: cudaMemcpyBatchAsync refuses the legacy default stream
        with torch.cuda.stream(torch.cuda.Stream()):
            alone = copies_alone(host, copy._host)
        print(json.dumps({"context": ctx, **alone}), flush=True)
        if args.copies_only:
            continue
        engines: dict[str, Any] = {"gpu": (base, gpu), "stream": (copy, host)}
        for programs in (8, 16, 32):
            kind = type(f"Kernel{programs}", (KernelFetch,), {"programs": programs})
            engines[f"kernel{programs}"] = (engine(model, base, kind), host)
        runs, tokens = {}, {}
        for name, (eng, items) in engines.items():

            def go(eng: Any = eng, items: Any = items, prefix: Any = prefix) -> int:
                eng.load(prefix, items)
                return int(eng.prefill([question])[0])

            tokens[name] = go()
            runs[name] = go
        row: dict[str, Any] = {"context": ctx, **alternating(runs, clock, args.rounds)}
        row["same_first_token"] = len(set(tokens.values())) == 1
        row["host_over_gpu"] = {
            k: round(v / row["gpu"], 3) for k, v in row.items() if isinstance(v, float) and k != "gpu"
        }
        print(json.dumps(row), flush=True)
        del engines, runs, copy, gpu, host
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
