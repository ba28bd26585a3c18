"""The per-shape state of :class:`~ragcompress.kv.fast.engine.FastGenerator` and the small
helpers around it: how a step's context is split, and the step arguments the host writes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ragcompress.kv.fast.waves import CONTIGUOUS

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.attention import CascadeAttention, StepMeta
    from ragcompress.kv.fast.buffer import StaticKVBuffer

__all__ = [
    "capture",
    "context_splits",
    "decode_args",
    "graph_of",
    "new_shape",
    "prefill_args",
]


@dataclass(eq=False)
class _Shape:
    """Static tensors (and the graph, when captured) of one (batch, qlen) step shape.

    ``args[host_from:]`` come from the host each step (a decode step's first B are its input
    tokens, copied on the device). On CUDA they go through ``stage``, a pinned tensor that the
    step itself copies into ``args`` first (in a graph: its first node), so a request's host
    work is writing numpy values, not queuing a copy: the host-side upload took ~50 µs of a
    32K warm request on an H200 host (``benchmarks/results/ttft_gaps_h200/``)."""

    batch: int
    qlen: int
    args: torch.Tensor  # int64 (4*B*T + B,): ids | positions | slots | used(B*T, first B) | last(B)
    meta: StepMeta
    attention: CascadeAttention | None = None  # None: the generator's; gated when chunks stream
    logits: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    graph: Any = None
    host_from: int = 0
    stage: torch.Tensor | None = None  # pinned (numel - host_from,) int64 on CUDA, else None
    _view: np.ndarray | None = field(default=None, repr=False)
    _read: Any = field(default=None, repr=False)  # event: the last step's copy out of stage done

    def put(self, values: np.ndarray, start: int = 0) -> None:
        """Host values for ``args[start:]`` of the next step (``start`` ≤ ``host_from``; the
        part before ``host_from``, a one-token prefill's ids, is copied here, synchronously).
        Waits first for this shape's previous step, whose copy reads the stage."""
        import torch

        head = self.host_from - start
        if head > 0:
            self.args[start : self.host_from].copy_(torch.from_numpy(values[:head]))
        rest = values[max(head, 0) :]
        if self.stage is None:
            self.args[self.host_from :].copy_(torch.from_numpy(rest))
            return
        if self._read is not None:
            self._read.synchronize()  # the last step's copy out of the stage is done
        assert self._view is not None
        self._view[:] = rest

    def pull(self) -> None:
        """Inside the step, first: the staged host values into ``args`` (captured as a copy)."""
        if self.stage is not None:
            self.args[self.host_from :].copy_(self.stage, non_blocking=True)

    def ran(self) -> None:
        """After the step is queued: mark when its copy out of the stage is done."""
        if self.stage is not None:
            import torch

            if self._read is None:
                self._read = torch.cuda.Event()
            self._read.record()


def new_shape(
    b: int,
    t: int,
    buffer: StaticKVBuffer,
    capacity: int,
    heads: int,
    kv_heads: int,
    attention: CascadeAttention | None,
) -> _Shape:
    """A (batch ``b``, qlen ``t``) step's static tensors over ``buffer``, whose requests hold up
    to ``capacity`` context slots (not captured). Its arguments start as harmless defaults for
    warm-up and capture: slot i of question 0.., position i."""
    import torch

    from ragcompress.kv.fast.attention import StepMeta

    dev = buffer.ctx_keys.device
    n = b * t
    args = torch.zeros(4 * n + b, dtype=torch.long, device=dev)
    args[n : 2 * n] = torch.arange(n, device=dev) % t
    questions = torch.arange(b, device=dev)[:, None] * buffer.region
    args[2 * n : 3 * n] = (questions + torch.arange(t, device=dev)).reshape(-1)
    args[3 * n : 4 * n] = t
    args[4 * n :] = torch.arange(b, device=dev) * t + t - 1
    splits = context_splits(dev, n, heads, kv_heads, capacity)
    used = torch.zeros(b, dtype=torch.int32, device=dev)
    meta = StepMeta(
        b, t, buffer.region, capacity, buffer.ctx_len_t, used, splits=splits, group=heads // kv_heads
    )
    shape = _Shape(b, t, args, meta, attention, host_from=b if t == 1 else 0)
    if dev.type == "cuda":  # staged with the defaults, which warm-up and capture then copy
        shape.stage = args[shape.host_from :].cpu().pin_memory()
        shape._view = shape.stage.numpy()
    return shape


def capture(shape: _Shape, forward: Callable[[_Shape], None], buffer: StaticKVBuffer, pool: Any) -> Any:
    """Capture ``forward(shape)`` into ``shape.graph`` (CUDA), in the graph memory ``pool`` (None:
    a new one); returns the pool, for the next shape to share."""

    dev = buffer.ctx_keys.device
    # Warm-up and capture run the step for real, writing K/V into question slots: a shape
    # captured lazily (the decode step's, right after a prefill) would clobber the live
    # questions' K/V. Keep them aside for the capture (a one-off copy per shape).
    saved = (buffer.q_keys.clone(), buffer.q_values.clone())
    shape.graph, pool = graph_of(lambda: forward(shape), dev, pool)
    buffer.q_keys.copy_(saved[0])
    buffer.q_values.copy_(saved[1])
    return pool


def graph_of(fn: Callable[[], Any], device: torch.device, pool: Any = None) -> tuple[Any, Any]:
    """``(graph, pool)``: ``fn`` captured in a CUDA graph on ``device``, after the two eager
    calls on a side stream that capture needs (memory and handles made outside the graph), in
    the graph memory ``pool`` (None: a new one)."""
    import torch

    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    if pool is None:
        pool = torch.cuda.graph_pool_handle()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph, pool


def context_splits(device: torch.device, n: int, heads: int, kv_heads: int, capacity: int) -> int:
    """Context segments for n query tokens: as many programs (KV heads x 128-row tiles of the
    folded queries x segments) as the device has SMs, one wave, segments of ≥ 256 keys. On an
    H200 (Llama-3-8B shape, 32 query tokens) the Triton context pass ran a layer at 32K in
    47.9 µs over 16 segments against 53.7 over 33, two waves
    (``benchmarks/results/ttft_context_kernel_h200/``): longer segments amortize each
    program's start and its share of the merge."""
    import torch

    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return CONTIGUOUS.splits(sms, n * (heads // kv_heads), kv_heads, capacity // 256)


def prefill_args(
    questions: Sequence[Sequence[int]], t: int, buffer: StaticKVBuffer, starts: Sequence[int] | None = None
) -> np.ndarray:
    """A prefill's step arguments (4 * B * t + B,) int64, the layout ``_forward`` reads: token
    ids (B, t) zero-padded, RoPE positions, question-region slots, rows used per question
    (t each) and each question's last row. ``starts`` (B,): each question's first position (a
    ragged batch, each question after its own context); None: the buffer's next position for
    all. Built in numpy from a per-shape template: a dozen torch ops on small CPU tensors cost
    ~0.1 ms of host time before every step, the same in plain numpy ~12 µs, the template ~3."""
    b = len(questions)
    n = b * t
    args = _prefill_template(b, t, buffer.region).copy()
    if starts is None:
        args[n : 2 * n] += buffer.next_position
    else:
        args[n : 2 * n] += np.repeat(_starts(buffer, starts, b), t)
    for i, q in enumerate(questions):
        args[i * t : i * t + len(q)] = q
        args[4 * n + i] += len(q) - 1
    return args


@functools.lru_cache(maxsize=64)
def _prefill_template(b: int, t: int, region: int) -> np.ndarray:
    """:func:`prefill_args`'s values that depend only on the shape (read-only): ids 0, positions
    0..t-1 a question, slots, rows used t, each question's first row."""
    n = b * t
    args = np.zeros(4 * n + b, dtype=np.int64)
    args[n : 2 * n] = np.tile(np.arange(t), b)
    args[2 * n : 3 * n] = (np.arange(b)[:, None] * region + np.arange(t)[None]).reshape(-1)
    args[3 * n : 4 * n] = t
    args[4 * n :] = np.arange(b) * t
    args.flags.writeable = False
    return args


def decode_args(
    cur: Sequence[int], buffer: StaticKVBuffer, starts: Sequence[int] | None = None
) -> np.ndarray:
    """A decode step's arguments after its B tokens (4 * B,) int64: each question's RoPE
    position, its slot in its question region, rows used and its row, for ``cur`` (B,) tokens
    each question holds so far (``starts``: as :func:`prefill_args`). In numpy for the reason
    :func:`prefill_args` gives, once a token."""
    c = np.asarray(cur, dtype=np.int64)
    rows = np.arange(len(c))
    return np.concatenate([_starts(buffer, starts, len(c)) + c, rows * buffer.region + c, c + 1, rows])


def _starts(buffer: StaticKVBuffer, starts: Sequence[int] | None, b: int) -> np.ndarray:
    """(B,) int64 first positions: ``starts``, or the buffer's next position for every question."""
    if starts is None:
        return np.full(b, buffer.next_position, dtype=np.int64)
    if len(starts) != b:
        raise ValueError(f"{b} questions, but {len(starts)} contexts were placed for them (one each)")
    return np.asarray(starts, dtype=np.int64)
