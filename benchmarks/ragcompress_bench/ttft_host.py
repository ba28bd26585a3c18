"""The host and disk tiers of ``ragcompress bench ttft``: kvzip 0.6 + int4/64 chunks held on the
GPU, in pinned host memory (streamed layer group by layer group under the question's compute,
:mod:`ragcompress.kv.fast.stream`) and on local disk, side by side; and the bandwidths that bound
them (pinned and pageable host-to-device, one large copy).

Columns per context:

* ``kvzip_gpu_ms`` — the chunks packed on the GPU (:class:`~ragcompress.kv.fast.QuantizedPackedChunk`):
  one gather launch, then the question graph;
* ``kvzip_host_ms`` — the same chunks as pinned :class:`~ragcompress.kv.fast.HostChunk` s, streamed
  in ranges of ``--stream-group`` layers, tapered at both ends (``host_over_gpu`` = the ratio);
  ``kvzip_host_g{N}_ms`` for the other group sizes of the sweep; ``kvzip_host_serial_ms``: one range
  of every layer (all copies, then the step: no overlap); ``kvzip_host_direct_g{N}_ms``: the
  zero-copy streamer (the kernel reads pinned host memory, no staging copies);
* ``kvzip_disk_ms`` — read from a :class:`~ragcompress.kv.store.disk.DiskStore` in one batch, as
  the chunk cache reads a request (``lookup_many``: the next files read while the earlier ones
  are verified; page cache dropped before each request where the machine allows it, see
  ``disk_cache``), packed into pinned memory and streamed; wall clock from the first read to the
  first token on the host. ``kvzip_disk_read_ms``: its reads alone (read, verified, decoded);
  ``kvzip_disk_bytes_ms``: the same files' bytes read and nothing else, cache dropped the same
  way, in the same process (the reads' floor: tells a slow store from a slow disk).

The kvzip scores come from the real reconstruction pass
(:func:`~ragcompress.kv.encode.reconstruct.reconstruction_scores`) over each passage's KV as cut
from the joint prefill, with random token ids as the repeat prompt (random weights: which tokens
survive does not matter for time, only how many).
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["SWEEP", "drop_page_cache", "host_bandwidths", "host_lines", "host_rows"]

SWEEP = (4, 16)  # layer-group sizes timed besides --stream-group (and the serial one)
DIRECT = (4,)  # layer-group sizes of the zero-copy streamer
RATIO, BITS, GROUP = 0.6, 4, 64


def host_bandwidths(dev: Any, clock: Any) -> dict[str, Any]:
    """GB/s of one large host-to-device copy from pinned and from pageable memory."""
    import torch

    if dev.type != "cuda":
        return {}
    n = 1 << 30
    dst = torch.empty(n, dtype=torch.uint8, device=dev)
    out = {}
    for name, pin in (("h2d_pinned_gbs", True), ("h2d_pageable_gbs", False)):
        # the bytes do not matter to a DMA copy (nothing compresses on the link)
        src = torch.ones(n, dtype=torch.uint8, pin_memory=pin)
        ms = clock(lambda s=src: dst.copy_(s, non_blocking=True), repeats=5, warmup=2)
        out[name] = round(n / (ms / 1e3) / 1e9, 1)
    return out


def _kvzip_chunks(
    model: Any, kv: list[tuple[Any, Any]], p: int, starts: list[int], sizes: list[int], ids: Any
) -> list[Any]:
    """kvzip (0.6) + int4/64, each passage as the chunk cache stores it (KVChunk on the GPU)."""
    import torch
    from transformers import DynamicCache

    from ragcompress.kv.chunk import DenseLayer, KVChunk
    from ragcompress.kv.encode.reconstruct import reconstruction_scores
    from ragcompress.kv.key import ChunkKey, tokens_digest
    from ragcompress.kv.presses.kvzip import KVzipPress
    from ragcompress.kv.presses.quantize import QuantizePress

    zip_, quant = KVzipPress(ratio=RATIO), QuantizePress(bits=BITS, group_size=GROUP)
    prompt = list(range(1000, 1012))
    out = []
    for s, n in zip(starts, sizes, strict=True):
        sl = slice(s, s + n)
        cache = DynamicCache(
            ddp_cache_data=[
                (torch.cat([k[:, :p], k[:, sl]], 1)[None], torch.cat([v[:, :p], v[:, sl]], 1)[None])
                for k, v in kv
            ],
            config=model.config,
        )
        passage = ids[sl].tolist()
        scores = reconstruction_scores(model, cache, [passage], prompt, p, n, 0)
        del cache
        layers = []
        for li, (k, v) in enumerate(kv):
            pos = torch.arange(s, s + n, device=k.device).expand(k.shape[0], n).contiguous()
            layer: Any = DenseLayer(k[:, sl].contiguous(), v[:, sl].contiguous(), pos)
            layer = quant(zip_(layer, layer_idx=li, attn=scores[li][0][:, None, :]), layer_idx=li, attn=None)
            layers.append(layer)
        key = ChunkKey(model="bench", layout="bench", presses="kvzip+quantize", tokens=tokens_digest(passage))
        out.append(KVChunk(layers, ids[sl].clone(), s, n, key, "bench"))
    return out


def host_rows(
    model: Any,
    fast: Any,
    kv: list[tuple[Any, Any]],
    p: int,
    sizes: list[int],
    ids: Any,
    question: list[int],
    clock: Any,
    group: int,
) -> dict[str, Any]:
    """The host/disk columns at one context (see the module docstring)."""
    import torch

    from ragcompress.kv.fast import FastGenerator, HostChunk, PackedChunk, QuantizedPackedChunk
    from ragcompress.kv.fast.stream import HostStream
    from ragcompress.kv.fast.stream_direct import DirectHostStream

    row: dict[str, Any] = {}
    starts = [p + sum(sizes[:i]) for i in range(len(sizes))]
    prefix = PackedChunk.from_layers([k[:, :p] for k, _ in kv], [v[:, :p] for _, v in kv], p, 0)
    t0 = time.perf_counter()
    chunks = _kvzip_chunks(model, kv, p, starts, sizes, ids)
    row["kvzip_encode_s"] = round(time.perf_counter() - t0, 2)
    gpu = [QuantizedPackedChunk.from_chunk(c) for c in chunks]
    host = [HostChunk.from_chunk(c.to("cpu"), model.dtype) for c in chunks]
    row["kvzip_tokens"] = sum(c.num_tokens for c in chunks)
    row["kvzip_chunk_bytes"] = sum(h.nbytes for h in host)
    row["kvzip_pinned"] = all(h.pinned for h in host)
    tokens: dict[str, int] = {}

    def run(engine: Any, items: list[Any]) -> Callable[[], int]:
        def go() -> int:
            engine.load(prefix, items)
            return int(engine.prefill([question])[0])

        return go

    def variant(streamer: Any, g: int) -> Any:
        return FastGenerator(
            model,
            capacity=fast.capacity,
            max_question=fast.max_question,
            max_new_tokens=fast.max_new_tokens,
            buckets=fast.buckets,
            graphs=fast.graphs,
            attention=fast.attention,
            step=fast.step,  # the same step (and stacked weights): only the buffer is new
            stream_group=g,
            streamer=streamer,
        )

    engines: dict[str, tuple[Callable[[], Any], list[Any]]] = {
        "kvzip_gpu": (lambda: fast, gpu),
        "kvzip_host": (lambda: fast, host),
    }
    variants = [(f"kvzip_host_g{g}", HostStream, g) for g in SWEEP if g != group]
    variants += [("kvzip_host_serial", HostStream, fast.buffer.layers)]
    variants += [(f"kvzip_host_direct_g{g}", DirectHostStream, g) for g in DIRECT]
    for name, streamer, g in variants:
        engines[name] = (functools.partial(variant, streamer, g), host)
    for name, (make, items) in engines.items():
        try:  # one engine at a time: a variant's buffer goes before the next is built
            row[f"{name}_ms"], tokens[name] = _timed(run(make(), items), clock)
        except Exception as exc:
            traceback.print_exc()
            row[f"{name}_ms"] = None
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if row.get("kvzip_gpu_ms") and row.get("kvzip_host_ms"):
        row["host_over_gpu"] = round(row["kvzip_host_ms"] / row["kvzip_gpu_ms"], 3)
    try:
        row.update(_disk(fast, prefix, chunks, question, clock, tokens))
    except Exception as exc:
        traceback.print_exc()
        row["kvzip_disk_error"] = f"{type(exc).__name__}: {exc}"[:300]
    row["kvzip_first_tokens"] = tokens
    row["kvzip_tiers_agree"] = len(set(tokens.values())) == 1
    del gpu, host, chunks
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row


def _timed(fn: Callable[[], int], clock: Any) -> tuple[float, int]:
    """Median ms of ``fn`` and its first token."""
    return round(clock(fn), 3), fn()


def drop_page_cache() -> str:
    """Drop the page cache (root on Linux); says what happened."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "dropped before each request"
    except OSError as err:
        return f"not dropped ({err.strerror or err}): files may be read from the page cache"


def _disk(
    fast: Any, prefix: Any, chunks: list[Any], question: list[int], clock: Any, tokens: dict[str, int]
) -> dict[str, Any]:
    """Chunks from a DiskStore: read, packed into pinned memory, streamed; median wall ms. Each
    pass first reads the same files' bytes and nothing else, the page cache dropped the same
    way: the reads' floor in this process, beside them."""
    from ragcompress.kv.store.disk import DiskStore

    with tempfile.TemporaryDirectory(prefix="ttft-disk-") as tmp:
        store = DiskStore(tmp)
        for c in chunks:
            store.put(c.key, c.to("cpu"))
        keys = [c.key for c in chunks]
        files = [store.path(k) for k in keys]  # the files lookup_many reads, by the store's own address
        times, reads, floors, note = [], [], [], ""
        for i in range(clock.warmup + max(3, clock.repeats // 2)):
            drop_page_cache()
            t0 = time.perf_counter()
            for f in files:
                f.read_bytes()
            floor = time.perf_counter() - t0
            note = drop_page_cache()
            t0 = time.perf_counter()
            got = [found.chunk for found in store.lookup_many(keys)]  # as ChunkCache reads a request
            t1 = time.perf_counter()
            fast.load(prefix, got)
            tok = int(fast.prefill([question])[0])
            if i >= clock.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
                reads.append((t1 - t0) * 1e3)
                floors.append(floor * 1e3)
        tokens["kvzip_disk"] = tok
        return {
            "kvzip_disk_ms": round(statistics.median(times), 3),
            "kvzip_disk_read_ms": round(statistics.median(reads), 3),
            "kvzip_disk_bytes_ms": round(statistics.median(floors), 3),
            "disk_cache": note,
        }


def host_lines(report: dict[str, Any]) -> list[str]:
    """Markdown: the tier table and the bandwidths of the run."""
    bw = report.get("host_bandwidths") or {}
    rows = [r for r in report["rows"] if "kvzip_host_ms" in r]
    if not rows:
        return []
    sweep = sorted({k for r in rows for k in r if k.startswith("kvzip_host_") and k.endswith("_ms")})
    sweep = [k for k in sweep if k not in ("kvzip_host_ms", "kvzip_host_serial_ms")]
    cols = [
        "context_tokens",
        "kvzip_tokens",
        "kvzip_chunk_bytes",
        "kvzip_gpu_ms",
        "kvzip_host_ms",
        "host_over_gpu",
        *sweep,
        "kvzip_host_serial_ms",
        "kvzip_disk_ms",
        "kvzip_disk_read_ms",
        "kvzip_disk_bytes_ms",
        "kvzip_tiers_agree",
    ]
    lines = [
        "",
        f"## Tiers: kvzip {RATIO} + int{BITS}/{GROUP} chunks on the GPU, in pinned host memory "
        f"(streamed, ranges of {report.get('stream_group')} layers tapered at both ends), on disk",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join("—" if r.get(c) is None else str(r[c]) for c in cols) + " |")
    disk = {r.get("disk_cache") for r in rows if r.get("disk_cache")}
    lines += [
        "",
        f"host-to-device: {bw.get('h2d_pinned_gbs', '—')} GB/s pinned, "
        f"{bw.get('h2d_pageable_gbs', '—')} GB/s pageable (one 1 GiB copy); device copy "
        f"{report.get('copy_bandwidth_gbs')} GB/s (read + written). "
        f"Disk page cache: {'; '.join(sorted(disk)) or '—'}.",
    ]
    return lines
