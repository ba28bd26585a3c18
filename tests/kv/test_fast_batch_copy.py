"""The host tier's batched copies: every chunk's bytes of every layer range reach their place in
the staging area exactly once (the address arithmetic, checked with real memory moves on the
CPU), and on CUDA one ``cudaMemcpyBatchAsync`` per range moves them bit for bit, refusing what
it cannot do with a clear error."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from ragcompress.kv.fast._batch_copy import RangeCopies, range_copies, runtime
from ragcompress.kv.fast.stream import schedule


def _chunks(layers: int, layer_bytes: list[int], device_pin: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = [torch.randint(0, 256, (layers * n,), generator=g, dtype=torch.uint8) for n in layer_bytes]
    return [c.pin_memory() for c in out] if device_pin else out


def _plan(
    chunks: list[torch.Tensor], layer_bytes: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    stages, total = [], 0
    for c in chunks:
        stages.append(total)
        total += -(-c.numel() // 256) * 256 + 256  # aligned, with a gap that must stay untouched
    ptrs = np.array([c.data_ptr() for c in chunks], dtype=np.int64)
    return ptrs, np.array(layer_bytes, dtype=np.int64), np.array(stages, dtype=np.int64), total


@pytest.mark.parametrize("group", [1, 3, 8, 64])
def test_range_copies_place_every_layer_of_every_chunk_once(group):
    layers, layer_bytes = 11, [48, 160, 16, 1024]
    chunks = _chunks(layers, layer_bytes)
    ptrs, sizes, stages, total = _plan(chunks, layer_bytes)
    staging = torch.full((total,), 7, dtype=torch.uint8)
    ranges = schedule(layers, group)
    copies = range_copies(ptrs, sizes, stages, staging.data_ptr(), ranges)
    assert len(copies) == len(ranges)
    moved = 0
    for rc in copies:
        assert rc.dst.dtype == rc.src.dtype == rc.sizes.dtype == np.uint64
        for d, s, n in zip(rc.dst.tolist(), rc.src.tolist(), rc.sizes.tolist(), strict=True):
            ctypes.memmove(d, s, n)
            moved += n
    assert moved == sum(c.numel() for c in chunks)  # no byte twice
    want = torch.full((total,), 7, dtype=torch.uint8)
    for c, s in zip(chunks, stages.tolist(), strict=True):
        want[s : s + c.numel()] = c
    assert torch.equal(staging, want)


def test_an_empty_range_list_copies_nothing():
    assert range_copies(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 0, []) == []


@pytest.mark.gpu
def test_gpu_batch_copy_moves_the_pieces_bit_for_bit_and_names_a_refusal():
    torch.cuda.init()
    batch = runtime()
    major, minor = (int(x) for x in (torch.version.cuda or "0.0").split(".")[:2])
    if (major, minor) < (12, 8):
        assert batch is None
        pytest.skip("CUDA runtime older than 12.8: no cudaMemcpyBatchAsync")
    assert batch is not None
    layers, layer_bytes = 6, [4096, 112, 65536]
    chunks = _chunks(layers, layer_bytes, device_pin=True)
    ptrs, sizes, stages, total = _plan(chunks, layer_bytes)
    staging = torch.zeros(total, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for rc in range_copies(ptrs, sizes, stages, staging.data_ptr(), schedule(layers, 2)):
            batch(rc, stream.cuda_stream, staging.device.index or 0)
    stream.synchronize()
    for c, s in zip(chunks, stages.tolist(), strict=True):
        assert torch.equal(staging[s : s + c.numel()].cpu(), c)
    # the legacy default stream (handle 0) is refused: a clear error, and torch's next call is clean
    with pytest.raises(RuntimeError, match="cudaMemcpyBatchAsync failed"):
        batch(range_copies(ptrs, sizes, stages, staging.data_ptr(), [(0, layers)])[0], 0, 0)
    torch.cuda.synchronize()
    assert int(staging.sum()) >= 0


@pytest.mark.gpu
def test_gpu_the_streamer_batches_pinned_chunks(tokenizer):
    from ragcompress.kv.fast import FastGenerator, HostChunk
    from ragcompress.kv.fast.stream import HostStream
    from tests.support.tiny import make_tiny_llama

    from .test_fast_host import _setup

    if runtime() is None:
        pytest.skip("no cudaMemcpyBatchAsync in this CUDA runtime")
    model = make_tiny_llama(len(tokenizer), seed=5, num_hidden_layers=4).cuda().to(torch.bfloat16)
    _, _, chunks, _ = _setup(model, tokenizer, "dense")
    host = [HostChunk.from_chunk(c.to("cpu"), torch.bfloat16) for c in chunks]
    fast = FastGenerator(model, capacity=160, max_question=16, max_new_tokens=6, buckets=(16,))
    hs = HostStream(fast.buffer, 1)
    stages = hs.stages(host)
    assert all(isinstance(c, RangeCopies) for c in hs.copies(host, stages))
