"""A tried change, not kept: build a stored chunk's tensors as views of the file's one buffer
instead of through ``safetensors.torch.load`` (which copies each tensor out). Both builders run
in one process on the same 10K context (kvzip 0.6 + int4/64, 20 files), taking turns:

* ``build``: the builder alone over blobs already in memory (median of 10 turns);
* ``lookup``: ``DiskStore.lookup_many`` warm (page cache full), read_ahead 0, the builder swapped in
  (median of 8 turns): the steady state of a process that keeps reading.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$PWD:$PWD/benchmarks python3 \\
        benchmarks/results/store_read/not_kept_2026-12-04/views_ab.py
    # and with glibc keeping freed memory instead of returning it to the kernel:
    MALLOC_TRIM_THRESHOLD_=2000000000 MALLOC_MMAP_THRESHOLD_=2000000000 OMP_WAIT_POLICY=PASSIVE ...
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from ragcompress.kv import serialize
from ragcompress.kv.store.disk import DiskStore

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/
import store_read

_DT = {
    "U8": torch.uint8, "I64": torch.int64, "I32": torch.int32, "BF16": torch.bfloat16, "F16": torch.float16,
    "F32": torch.float32,
}  # fmt: skip


def views(data: bytes) -> dict[str, torch.Tensor]:
    """Each tensor a view of one writable copy of the blob (the tried builder)."""
    n = struct.unpack("<Q", data[:8])[0]
    start, header = 8 + n, json.loads(data[8 : 8 + n])
    buf = torch.frombuffer(bytearray(data) if isinstance(data, bytes) else data, dtype=torch.uint8)
    out = {}
    for k, e in header.items():
        if k != "__metadata__":
            b, f = e["data_offsets"]
            out[k] = buf[start + b : start + f].view(_DT[e["dtype"]]).reshape(e["shape"])
    return out


def main() -> None:
    chunks = store_read._chunks(10240, True)
    blobs = [bytearray(serialize.chunk_to_bytes(c)) for c in chunks]
    meta = [serialize.read_header(b) for b in blobs]
    cases = list(zip(meta, blobs, chunks, strict=True))
    builders: dict[str, Any] = {"safetensors load": lambda d: load(bytes(d)), "views": views}
    build: dict[str, list[float]] = {k: [] for k in builders}
    for _ in range(10):
        for name, fn in builders.items():
            t = time.perf_counter()
            got = [serialize._rebuild(m, fn(d), c.key, "cpu") for m, d, c in cases]
            build[name].append((time.perf_counter() - t) * 1e3)
            del got
    tmp = tempfile.mkdtemp()
    store = DiskStore(Path(tmp) / "s", read_ahead=0)
    for c in chunks:
        store.put(c.key, c)
    keys = [c.key for c in chunks]
    del chunks, blobs, cases
    lookup: dict[str, list[float]] = {k: [] for k in builders}
    import safetensors.torch as st

    for _ in range(8):
        for name, fn in builders.items():
            # chunk_from_bytes imports safetensors' load at each call: swap the builder in there
            st.load = (lambda d, fn=fn: fn(d)) if name == "views" else load
            t = time.perf_counter()
            assert all(f.chunk is not None for f in store.lookup_many(keys))
            lookup[name].append((time.perf_counter() - t) * 1e3)
    st.load = load
    for name in builders:
        print(
            f"{name:17s} build {statistics.median(build[name]):6.1f} ms   "
            f"lookup_many warm {statistics.median(lookup[name]):6.1f} ms"
        )


if __name__ == "__main__":
    main()
