"""Stream host-resident chunks into the buffer's context layer group by layer group, under the
question's compute.

Per request, on a side CUDA stream: the tables go up (one copy), then for each group of
``group`` layers every host chunk's bytes of those layers are copied (one contiguous range per
chunk) into a device staging area, the gather kernel dequantizes / re-rotates them into the
context, and the group's event is recorded. The question step waits, before layer ``l``'s
attention reads the context, only on the event of ``l``'s group
(:class:`~ragcompress.kv.fast.gate.GatedAttention`), so copies of later layers overlap the
compute of earlier ones. Off CUDA the same code copies and gathers in order (the torch
reference over the same table rows): "streaming" degenerates to a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.buffer import BufferOverflowError, StaticKVBuffer
from ragcompress.kv.fast.host import HostChunk
from ragcompress.kv.fast.packed import BufferChunk
from ragcompress.kv.fast.rows import GatherRows
from ragcompress.kv.fast.stored import StoredChunk
from ragcompress.kv.fast.write import gather, triton_available

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.host_forms import HostForm
    from ragcompress.models.rope import Rotary

__all__ = ["HostStream", "stream_batch"]

STAGE_ALIGN = 256


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


@dataclass(eq=False)
class HostStream:
    """The side stream, staging area and per-range events of one buffer. ``group``: layers per
    copy in the middle of the :func:`schedule` (one copy per chunk and range, one gather launch
    per range)."""

    buffer: StaticKVBuffer
    group: int = 8
    staging: torch.Tensor | None = field(default=None, init=False, repr=False)
    side: Any = field(default=None, init=False, repr=False)
    events: list[Any] = field(default_factory=list, init=False, repr=False)
    ranges: list[tuple[int, int]] = field(default_factory=list, init=False, repr=False)
    capturable: bool = field(default=True, init=False)  # a gated step can be a CUDA graph
    _first: dict[int, int] = field(default_factory=dict, init=False, repr=False)  # layer -> range
    _keep: list[Any] = field(default_factory=list, init=False, repr=False)  # this request's tables
    _issued: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.group <= 0:
            raise ValueError(f"group (layers per copy) must be positive, got {self.group}")
        self.ranges = schedule(self.buffer.layers, self.group)
        self._first = {a: i for i, (a, _) in enumerate(self.ranges)}

    @property
    def cuda(self) -> bool:
        return self.buffer.ctx_keys.device.type == "cuda"

    def wait(self, layer: int) -> None:
        """Make the current stream wait until layer ``layer``'s context is written (captured
        in a graph as an external event wait; a no-op off CUDA)."""
        i = self._first.get(layer)
        if self.cuda and i is not None and self.events:
            import torch

            torch.cuda.current_stream(self.buffer.ctx_keys.device).wait_event(self.events[i])

    def layer_of(self, keys: torch.Tensor) -> int:
        """Which layer's context ``keys`` (a ``ctx_keys[rows, l]`` view, any first row) is."""
        ctx = self.buffer.ctx_keys
        step = self.buffer.kv_heads * self.buffer.head_dim * ctx.element_size()
        return (keys.data_ptr() - ctx.data_ptr()) // step % self.buffer.layers

    def stream(self, entries: Sequence[tuple[HostChunk, int, int]], rotary: Rotary) -> None:
        """Write each (chunk, slot, delta) of ``entries`` into the context, range by range; on
        CUDA asynchronously on the side stream (see :meth:`wait`)."""
        import torch

        stages = self.stages([c for c, _, _ in entries])
        stacked = self.buffer.layers * self.buffer.kv_heads
        forms: dict[HostForm, list[torch.Tensor]] = {}
        most: dict[HostForm, int] = {}
        for (c, slot, delta), s in zip(entries, stages, strict=True):
            shift = torch.tensor(c.form.shift(s, slot, delta, stacked), dtype=torch.long)
            forms.setdefault(c.form, []).append(c.template + shift)
            most[c.form] = max(most.get(c.form, 0), c.tokens)
        # (layers, chunks, F): a range's rows are one contiguous block
        tables = {f: torch.stack(rows, dim=1).contiguous() for f, rows in forms.items()}
        if not self.cuda:
            staging = self._stage(stages[-1] + entries[-1][0].nbytes)
            for (c, _, _), s in zip(entries, stages, strict=True):
                staging[s : s + c.nbytes].copy_(c.data)
            for f, t in tables.items():
                f.reference(staging, t.reshape(-1, t.shape[-1]), self.buffer, rotary)
            return
        side = self._begin()
        kernel = _kernel_runs(self.buffer, rotary)
        dev = self.buffer.ctx_keys.device
        freq = rotary.inv_freq.to(device=dev, dtype=torch.float32).contiguous()
        with torch.cuda.stream(side):
            up = {f: t.pin_memory().to(dev, non_blocking=True) for f, t in tables.items()}
            self._keep = [up, freq]
            for (a, b), event in zip(self.ranges, self.events, strict=True):
                base = self.fetch([c for c, _, _ in entries], stages, a, b)
                for f, t in up.items():
                    if kernel:
                        f.launch(base, t[a:b].reshape(-1, t.shape[-1]), self.buffer, freq, most[f])
                    else:
                        f.reference(base, tables[f][a:b].reshape(-1, t.shape[-1]), self.buffer, rotary)
                event.record(side)

    def stages(self, chunks: Sequence[HostChunk]) -> list[int]:
        """Where each chunk's first byte lands in the staging area (bytes from its start)."""
        stages, total = [], 0
        for c in chunks:
            stages.append(total)
            total += -(-c.nbytes // STAGE_ALIGN) * STAGE_ALIGN
        if self.cuda:
            self._stage(total)
        return stages

    def fetch(self, chunks: Sequence[HostChunk], stages: list[int], a: int, b: int) -> torch.Tensor:
        """Queue the copies of layers ``a..b`` of every chunk into the staging area (on the
        current stream, the side one); returns the base the table offsets count from."""
        staging = self.staging
        assert staging is not None  # sized by stages()
        for c, s in zip(chunks, stages, strict=True):
            lo, hi = a * c.layer_bytes, b * c.layer_bytes
            staging[s + lo : s + hi].copy_(c.data[lo:hi], non_blocking=True)
        return staging

    def _begin(self) -> Any:
        """The side stream, after the main stream's queued work (the context may still be read
        by the last request's steps) and the last gated step's event waits."""
        import torch

        dev = self.buffer.ctx_keys.device
        if self._issued is not None:
            # the last gated step must be past its event waits before they are recorded again
            # (in any real flow the host read its token long ago: this returns at once)
            self._issued.synchronize()
            self._issued = None
        if self.side is None:
            self.side = torch.cuda.Stream(device=dev)
            try:  # external: a graph waits on the event's record of each request
                self.events = [torch.cuda.Event(external=True) for _ in self.ranges]
            except TypeError:  # a torch without external events: gated steps run uncaptured
                self.events = [torch.cuda.Event() for _ in self.ranges]
                self.capturable = False
        self.side.wait_stream(torch.cuda.current_stream(dev))
        return self.side

    def mark(self) -> None:
        """Called right after a step that waits on this request's events was launched: the
        next :meth:`stream` holds back until that step is past its waits before recording the
        events again (whatever the driver's rule for when a graph's wait node reads its event)."""
        if self.cuda:
            import torch

            self._issued = torch.cuda.Event()
            self._issued.record(torch.cuda.current_stream(self.buffer.ctx_keys.device))

    def _stage(self, nbytes: int) -> torch.Tensor:
        """The staging area (on the buffer's device), grown (never shrunk) to ``nbytes``."""
        import torch

        if self.staging is None or self.staging.numel() < nbytes:
            if self.side is not None:
                self.side.synchronize()  # the old area may still be read by the last gathers
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
    rotary: Rotary,
    host: HostStream,
    resident: int = 0,
) -> tuple[int, bool]:
    """:func:`~ragcompress.kv.fast.write.write_batch` where host chunks stream: device chunks
    go in one gather now, host chunks (a :class:`HostChunk`, or a stored chunk on the CPU while
    the buffer is on CUDA, packed on the way) through ``host``. Returns the next position and
    whether anything streams (the step must then wait per layer: :meth:`HostStream.wait`)."""
    items = [("prefix", _item(prefix, buffer))]
    items += [(f"chunk #{i}", _item(c, buffer)) for i, c in enumerate(chunks)]
    need = sum(c.num_tokens for _, c in items)
    if need > buffer.capacity:
        raise BufferOverflowError(
            f"prefix + {len(chunks)} chunks need {need} context slots; the buffer has {buffer.capacity}"
        )
    for what, c in items[resident:]:
        c.check(buffer, what)
    buffer.reset()
    for what, c in items[:resident]:
        buffer.reserve(c.num_tokens, c.length, what)
    rows = GatherRows(buffer)
    streamed: list[tuple[HostChunk, int, int]] = []
    for what, c in items[resident:]:
        slot, pos = buffer.reserve(c.num_tokens, c.length, what)
        if isinstance(c, HostChunk):
            streamed.append((c, slot, pos - c.base_offset))
        else:
            c.gather_into(rows, slot, pos - c.base_offset)
    if streamed:  # first: its copies start while the device chunks are gathered on this stream
        host.stream(streamed, rotary)
    gather(rows, rotary)
    buffer.commit()
    return buffer.next_position, bool(streamed) and host.cuda


def _item(chunk: Any, buffer: StaticKVBuffer) -> BufferChunk:
    """A buffer chunk; a stored chunk held on the CPU for a CUDA buffer is packed for streaming."""
    if isinstance(chunk, BufferChunk):
        return chunk
    if buffer.ctx_keys.device.type == "cuda" and chunk.device.type == "cpu":
        return HostChunk.from_chunk(chunk, buffer.ctx_keys.dtype)
    return StoredChunk.of(chunk)
