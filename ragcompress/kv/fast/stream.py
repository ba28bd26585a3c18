"""Stream host-resident chunks into the buffer's context layer range by layer range, under the
question's compute.

:meth:`HostStream.stream` (at load) plans a request: the gather tables and where each chunk's
bytes land in a device staging area. :meth:`HostStream.flush` (the engine calls it right after
it has queued the question step) queues the work on two side CUDA streams: for each range of
layers (:func:`schedule`) every host chunk's bytes of those layers are copied (one contiguous
range per chunk) on a copy stream that does nothing else, so the copy engine runs the ranges
back to back; on a high-priority gather stream the gather kernel waits for the range's copies,
dequantizes / re-rotates them into the context, and sets the range's flag. Before layer
``l``'s attention reads the context, the step polls the flag of ``l``'s range
(:class:`~ragcompress.kv.fast.gate.GatedAttention`, :func:`~ragcompress.kv.fast._spin.wait_flag`),
so copies of later layers overlap the compute of earlier ones, and the host queues the copies
while the GPU already computes. Off CUDA the same plan is written at flush, in order, by the
torch reference over the same table rows: "streaming" degenerates to a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast._batch_copy import RangeCopies, range_copies, runtime
from ragcompress.kv.fast.buffer import StaticKVBuffer
from ragcompress.kv.fast.host import HostChunk
from ragcompress.kv.fast.local_layers import place
from ragcompress.kv.fast.packed import BufferChunk
from ragcompress.kv.fast.rows import GatherRows
from ragcompress.kv.fast.stored import StoredChunk
from ragcompress.kv.fast.write import begin_write, gather, triton_available, write_positions

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.host_forms import HostForm
    from ragcompress.kv.fast.tables import Rotaries
    from ragcompress.models.rope import Rotary

__all__ = ["HostStream", "schedule", "stream_batch"]

STAGE_ALIGN = 256


@dataclass(frozen=True)
class ViewCopies:
    """One layer range's copies through torch: staging views and the host byte views copied into
    them (where :class:`~ragcompress.kv.fast._batch_copy.RangeCopies` cannot be used)."""

    dst: list[torch.Tensor]
    src: list[torch.Tensor]

    def queue(self, device: torch.device) -> None:
        """One ``cudaMemcpyAsync`` a piece on ``device`` 's current stream."""
        import torch

        torch._foreach_copy_(self.dst, self.src, non_blocking=True)


#: one layer range's copies, each queued by its ``queue(device)``
RangeCopy = ViewCopies | RangeCopies


def schedule(layers: int, group: int) -> list[tuple[int, int]]:
    """Layer ranges copied one after the other: groups of ``group`` layers, tapered to 1, 2, 4..
    at both ends, so the first layer waits for one layer's bytes (not a group's) and, when the
    copies are the bottleneck, the layers after the last copy are few. ``group >= layers``: one
    range (all copies, then the step)."""
    if group >= layers:
        return [(0, layers)]
    head = [1 << i for i in range(max(0, group.bit_length() - 1)) if 1 << i < group]
    mid = layers - 2 * sum(head)
    sizes = [group] * (layers // group) + ([layers % group] if layers % group else [])
    if mid >= 0:
        sizes = head + [group] * (mid // group) + ([mid % group] if mid % group else []) + head[::-1]
    ranges, a = [], 0
    for n in sizes:
        ranges.append((a, a + n))
        a += n
    return ranges


@dataclass(frozen=True, eq=False)
class _Plan:
    """One request's host chunks, where their bytes land (``stages``), their gather tables
    (layers, chunks, F) per form on the host and (CUDA) on the device, each form's largest token
    count, and (CUDA) the RoPE frequencies on the device and the main stream's point after which
    the side stream may write. Everything that allocates is done here, at load: while a queued
    step polls, the flush only queues copies and launches (an allocation that had to free
    memory would synchronize the device, and wait for the step that waits for the flush)."""

    chunks: list[HostChunk]
    stages: list[int]
    tables: dict[HostForm, torch.Tensor]
    most: dict[HostForm, int]
    rotary: Rotary
    device_tables: dict[HostForm, torch.Tensor] | None = None
    freq: Any = None
    ready: Any = None


@dataclass(eq=False)
class HostStream:
    """The side stream, staging area and per-range flags of one buffer. ``group``: layers per
    copy in the middle of the :func:`schedule` (one copy per chunk and range, one gather launch
    per range)."""

    buffer: StaticKVBuffer
    group: int = 8
    staging: torch.Tensor | None = field(default=None, init=False, repr=False)
    side: Any = field(default=None, init=False, repr=False)  # the gather stream (high priority)
    # one copy stream: dealing a request's copies over two measured slower on an H200 (32K:
    # 17.3 against 14.9 ms, results/ttft_host_load_h200/copy_streams_ab.txt)
    copier: Any = field(default=None, init=False, repr=False)
    copied: list[Any] = field(default_factory=list, init=False, repr=False)  # per range: copies done
    flags: Any = field(default=None, init=False, repr=False)  # (ranges,) int32: range written
    ranges: list[tuple[int, int]] = field(default_factory=list, init=False, repr=False)
    _first: dict[int, int] = field(default_factory=dict, init=False, repr=False)  # layer -> range
    _plan: _Plan | None = field(default=None, init=False, repr=False)
    _kernel: bool = field(default=False, init=False, repr=False)  # the gather kernels run here
    # (event, chunks): host chunks held until the copies (or zero-copy gathers) that read them
    # are done. A batch copy is invisible to torch's pinned-memory allocator (which holds a block
    # while a torch copy reads it), so a chunk its owner drops meanwhile must not be reused
    _held: list[tuple[Any, list[HostChunk]]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.group <= 0:
            raise ValueError(f"group (layers per copy) must be positive, got {self.group}")
        self.ranges = schedule(self.buffer.layers, self.group)
        self._first = {a: i for i, (a, _) in enumerate(self.ranges)}

    @property
    def cuda(self) -> bool:
        return self.buffer.ctx_keys.device.type == "cuda"

    @property
    def overlaps(self) -> bool:
        """Whether a step can wait per layer range (CUDA, with the Triton flag kernel); else
        the engine flushes before the step, which then finds the context written."""
        return self.cuda and self._kernel

    def wait(self, layer: int) -> None:
        """Hold the current stream until layer ``layer``'s context is written (a no-op off
        CUDA, or but at the first layer of a range)."""
        i = self._first.get(layer)
        if i is not None and self.overlaps and self.flags is not None:
            from ragcompress.kv.fast._spin import wait_flag

            wait_flag(self.flags[i : i + 1])

    def discard(self) -> bool:
        """Drop a planned request that was never flushed (its load was replaced); True if one was."""
        plan, self._plan = self._plan, None
        return plan is not None

    def stream(self, entries: Sequence[tuple[HostChunk, int, int]], rotary: Rotary) -> None:
        """Plan writing each (chunk, slot, delta) of ``entries`` into the context; the work is
        queued by :meth:`flush`."""
        import torch

        self._plan = None
        chunks = [c for c, _, _ in entries]
        stages = self.stages(chunks)
        stacked = self.buffer.layers * self.buffer.kv_heads
        forms: dict[HostForm, tuple[list[torch.Tensor], list[list[int]]]] = {}
        most: dict[HostForm, int] = {}
        for (c, slot, delta), s in zip(entries, stages, strict=True):
            templates, shifts = forms.setdefault(c.form, ([], []))
            templates.append(c.template)
            shifts.append(c.form.shift(s, slot, delta, stacked))
            most[c.form] = max(most.get(c.form, 0), c.tokens)
        # (layers, chunks, F): a range's rows are one contiguous block. One stack and one add
        # per form, not a tensor op per chunk: this runs before the step is queued.
        tables = {
            f: torch.stack(t, dim=1).add_(torch.tensor(sh, dtype=torch.long)) for f, (t, sh) in forms.items()
        }
        self._kernel = _kernel_runs(self.buffer, rotary)
        if not self.cuda:
            self._plan = _Plan(chunks, stages, tables, most, rotary)
            return
        dev = self.buffer.ctx_keys.device
        if self.side is None:
            # high priority: a range's gather is short and the step may be polling for it, so
            # its blocks go before the step's next ones rather than queue behind them
            self.side = torch.cuda.Stream(device=dev, priority=-1)
            self.copier = torch.cuda.Stream(device=dev)
            self.copied = [torch.cuda.Event() for _ in self.ranges]
            self.flags = torch.zeros(len(self.ranges), dtype=torch.int32, device=dev)
        up = {f: t.pin_memory().to(dev, non_blocking=True) for f, t in tables.items()}
        freq = rotary.inv_freq.to(device=dev, dtype=torch.float32).contiguous()
        self.flags.zero_()  # after the last request's steps, before this one's writes
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(dev))
        self._plan = _Plan(chunks, stages, tables, most, rotary, up, freq, ready)

    def flush(self, join: bool = False) -> None:
        """Queue the planned request's copies and gathers (CUDA: on the side stream, each range
        setting its flag; elsewhere: written now). ``join``: the current stream waits for them
        (as it does anyway where steps cannot wait per range)."""
        import torch

        plan, self._plan = self._plan, None
        if plan is None:
            return
        if not self.cuda:
            staging = self._stage(plan.stages[-1] + plan.chunks[-1].nbytes)
            for c, s in zip(plan.chunks, plan.stages, strict=True):
                staging[s : s + c.nbytes].copy_(c.data)
            for f, t in plan.tables.items():
                f.reference(staging, t.reshape(-1, t.shape[-1]), self.buffer, plan.rotary)
            return
        try:
            self._queue(plan)
        except BaseException:
            with torch.cuda.stream(self.side):  # never leave a queued step polling forever
                self.flags.fill_(1)
            raise
        if join or not self.overlaps:
            torch.cuda.current_stream(self.buffer.ctx_keys.device).wait_stream(self.side)

    def _queue(self, plan: _Plan) -> None:
        import torch

        buf, up, freq = self.buffer, plan.device_tables, plan.freq
        assert up is not None  # a CUDA plan
        self.copier.wait_event(plan.ready)
        self.side.wait_event(plan.ready)
        for t in (*up.values(), freq):
            t.record_stream(self.side)  # made on the main stream, read on the side one
        copies = self.copies(plan.chunks, plan.stages)
        for i, (a, b) in enumerate(self.ranges):
            # Copies and gathers on separate streams: on one stream, range i + 1's copies
            # would wait behind range i's gather, which shares the SMs with the step.
            with torch.cuda.stream(self.copier):
                base = self.fetch(copies, i)
                self.copied[i].record(self.copier)
            with torch.cuda.stream(self.side):
                self.side.wait_event(self.copied[i])
                for f, t in up.items():
                    cols = t.shape[-1]
                    if self._kernel:
                        f.launch(base, t[a:b].reshape(-1, cols), buf, freq, plan.most[f])
                    else:
                        f.reference(base, plan.tables[f][a:b].reshape(-1, cols), buf, plan.rotary)
                self.flags[i : i + 1].fill_(1)
        done = torch.cuda.Event()
        done.record(self.side)  # after every gather, each after its range's copies
        self._held = [(e, c) for e, c in self._held if not e.query()] + [(done, plan.chunks)]

    def stages(self, chunks: Sequence[HostChunk]) -> list[int]:
        """Where each chunk's first byte lands in the staging area (bytes from its start)."""
        stages, total = [], 0
        for c in chunks:
            stages.append(total)
            total += -(-c.nbytes // STAGE_ALIGN) * STAGE_ALIGN
        if self.cuda:
            self._stage(total)
        return stages

    def copies(self, chunks: Sequence[HostChunk], stages: list[int]) -> Sequence[RangeCopy]:
        """Per range of layers: the chunks' bytes it copies into the staging area. Pinned chunks
        on a runtime with ``cudaMemcpyBatchAsync``: address arrays, one batch call per range
        (:mod:`~ragcompress.kv.fast._batch_copy`). Otherwise tensor views, two splits per chunk,
        not two slices per chunk and range: at 32K (64 chunks, 9 ranges) the slicing alone cost
        the host ~3 ms per request."""
        import numpy as np

        staging = self.staging
        assert staging is not None  # sized by stages()
        if self.cuda and runtime() is not None and all(c.pinned for c in chunks):
            ptrs = np.fromiter((c.data.data_ptr() for c in chunks), dtype=np.int64, count=len(chunks))
            sizes = np.fromiter((c.layer_bytes for c in chunks), dtype=np.int64, count=len(chunks))
            return range_copies(
                ptrs, sizes, np.asarray(stages, dtype=np.int64), staging.data_ptr(), self.ranges
            )
        counts = [b - a for a, b in self.ranges]  # layers per range
        dst, src = [], []
        for c, s in zip(chunks, stages, strict=True):
            parts = [n * c.layer_bytes for n in counts]
            dst.append(staging[s : s + c.nbytes].split(parts))
            src.append(c.data.split(parts))
        return [ViewCopies([d[i] for d in dst], [x[i] for x in src]) for i in range(len(counts))]

    def fetch(self, copies: Sequence[RangeCopy], i: int) -> torch.Tensor:
        """Queue range ``i``'s copies into the staging area (on the current stream, the copy
        one); returns the base the table offsets count from."""
        assert self.staging is not None
        copies[i].queue(self.staging.device)
        return self.staging

    def _stage(self, nbytes: int) -> torch.Tensor:
        """The staging area (on the buffer's device), grown (never shrunk) to ``nbytes``."""
        import torch

        if self.staging is None or self.staging.numel() < nbytes:
            if self.side is not None:
                self.side.synchronize()  # the old area may still be read by the last gathers
                # (which waited for the last copies)
            dev = self.buffer.ctx_keys.device
            self.staging = torch.empty(max(nbytes, STAGE_ALIGN), dtype=torch.uint8, device=dev)
        return self.staging


def _kernel_runs(buffer: StaticKVBuffer, rotary: Rotary) -> bool:
    """The gather kernels rotate full-width keys in power-of-two halves, with Triton."""
    d = buffer.head_dim
    return rotary.rot_dim == d and d & (d - 1) == 0 and triton_available()


def stream_batch(
    buffer: StaticKVBuffer,
    prefix: BufferChunk,
    chunks: Sequence[BufferChunk | KVChunk],
    rotary: Rotaries,
    host: HostStream,
    resident: int = 0,
    missing: frozenset[int] = frozenset(),
) -> tuple[int, bool, frozenset[int]]:
    """:func:`~ragcompress.kv.fast.write.write_batch` where host chunks stream: device chunks
    go in one gather now, host chunks (a :class:`HostChunk`, or a stored chunk on the CPU while
    the buffer is on CUDA, packed on the way) through ``host``. Returns the next position,
    whether a plan is pending (the engine then queues the step with per-range waits,
    :meth:`HostStream.wait`, and :meth:`HostStream.flush` es right after) and which items
    (0: the prefix) lack their local layers. Models whose layers re-rotate with different tables
    (Gemma 3's local and global layers) do not stream yet: their host chunks are written with
    the device chunks, before the step, and only to the layers that can see them
    (``buffer.local``; ``missing``: :func:`~ragcompress.kv.fast.local_layers.place`)."""
    streams = not isinstance(rotary, Sequence)
    items = [("prefix", _item(prefix, buffer, streams))]
    items += [(f"chunk #{i}", _item(c, buffer, streams)) for i, c in enumerate(chunks)]
    spans = begin_write(buffer, items, resident)
    rows = GatherRows(buffer)
    streamed: list[tuple[HostChunk, int, int]] = []
    writes = []
    placed = []
    for i, (what, c) in enumerate(items[resident:], resident):
        slot, pos = buffer.reserve(c.num_tokens, c.length, what)
        writes.append((slot, pos - c.base_offset, c))
        if streams and isinstance(c, HostChunk):
            streamed.append((c, slot, pos - c.base_offset))
        else:
            placed.append((i, c, slot, pos))
    kept = [(i, c, *span) for i, ((_, c), span) in enumerate(zip(items[:resident], spans, strict=True))]
    partial = place(rows, placed, kept, buffer.local, buffer.next_position, missing)
    if streamed:  # planned first: its writes (other slots) may run alongside this gather
        assert not isinstance(rotary, Sequence)
        host.stream(streamed, rotary)
    gather(rows, rotary)
    write_positions(buffer, writes)
    buffer.commit()
    return buffer.next_position, bool(streamed), partial


def _item(chunk: Any, buffer: StaticKVBuffer, streams: bool) -> BufferChunk:
    """A buffer chunk; a stored chunk held on the CPU for a CUDA buffer is packed for streaming
    (where the model streams)."""
    if isinstance(chunk, BufferChunk):
        return chunk
    if streams and buffer.ctx_keys.device.type == "cuda" and chunk.device.type == "cpu":
        return HostChunk.from_chunk(chunk, buffer.ctx_keys.dtype)
    return StoredChunk.of(chunk)
