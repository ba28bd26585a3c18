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


@dataclass(eq=False)
class HostStream:
    """The side stream, staging area and per-group events of one buffer. ``group``: layers per
    copy (one copy per chunk and group, one gather launch per group)."""

    buffer: StaticKVBuffer
    group: int = 4
    staging: torch.Tensor | None = field(default=None, init=False, repr=False)
    side: Any = field(default=None, init=False, repr=False)
    events: list[Any] = field(default_factory=list, init=False, repr=False)
    ranges: list[tuple[int, int]] = field(default_factory=list, init=False, repr=False)
    capturable: bool = field(default=True, init=False)  # a gated step can be a CUDA graph
    _keep: list[Any] = field(default_factory=list, init=False, repr=False)  # this request's tables
    _issued: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.group <= 0:
            raise ValueError(f"group (layers per copy) must be positive, got {self.group}")
        layers = self.buffer.layers
        self.ranges = [(a, min(a + self.group, layers)) for a in range(0, layers, self.group)]

    @property
    def cuda(self) -> bool:
        return self.buffer.ctx_keys.device.type == "cuda"

    def wait(self, layer: int) -> None:
        """Make the current stream wait until layer ``layer``'s context is written (captured
        in a graph as an external event wait; a no-op off CUDA)."""
        if self.cuda and layer % self.group == 0 and self.events:
            import torch

            torch.cuda.current_stream(self.buffer.ctx_keys.device).wait_event(
                self.events[layer // self.group]
            )

    def layer_of(self, keys: torch.Tensor) -> int:
        """Which layer's context ``keys`` (a ``ctx_keys[rows, l]`` view, any first row) is."""
        ctx = self.buffer.ctx_keys
        step = self.buffer.kv_heads * self.buffer.head_dim * ctx.element_size()
        return (keys.data_ptr() - ctx.data_ptr()) // step % self.buffer.layers

    def stream(self, entries: Sequence[tuple[HostChunk, int, int]], rotary: Rotary) -> None:
        """Write each (chunk, slot, delta) of ``entries`` into the context, layer group by
        group; on CUDA asynchronously on the side stream (see :meth:`wait`)."""
        import torch

        stages, total = [], 0
        for c, _, _ in entries:
            stages.append(total)
            total += -(-c.nbytes // STAGE_ALIGN) * STAGE_ALIGN
        stacked = self.buffer.layers * self.buffer.kv_heads
        forms: dict[HostForm, list[torch.Tensor]] = {}
        most: dict[HostForm, int] = {}
        for (c, slot, delta), s in zip(entries, stages, strict=True):
            shift = torch.tensor(c.form.shift(s, slot, delta, stacked), dtype=torch.long)
            forms.setdefault(c.form, []).append(c.template + shift)
            most[c.form] = max(most.get(c.form, 0), c.tokens)
        # (layers, chunks, F): a layer group's rows are one contiguous block
        tables = {f: torch.stack(rows, dim=1).contiguous() for f, rows in forms.items()}
        if not self.cuda:
            staging = self._stage(total)
            for c, s in zip((e[0] for e in entries), stages, strict=True):
                staging[s : s + c.nbytes].copy_(c.data)
            for f, t in tables.items():
                f.reference(staging, t.reshape(-1, t.shape[-1]), self.buffer, rotary)
            return
        self._stream_cuda(entries, stages, total, tables, most, rotary)

    def _stream_cuda(
        self,
        entries: Sequence[tuple[HostChunk, int, int]],
        stages: list[int],
        total: int,
        tables: dict[HostForm, torch.Tensor],
        most: dict[HostForm, int],
        rotary: Rotary,
    ) -> None:
        import torch

        buf, dev = self.buffer, self.buffer.ctx_keys.device
        main = torch.cuda.current_stream(dev)
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
        staging = self._stage(total)
        self.side.wait_stream(main)  # the context may still be read by the last request's steps
        kernel = rotary.rot_dim == buf.head_dim and buf.head_dim & (buf.head_dim - 1) == 0
        kernel = kernel and triton_available()
        freq = rotary.inv_freq.to(device=dev, dtype=torch.float32).contiguous()
        with torch.cuda.stream(self.side):
            up = {f: t.pin_memory().to(dev, non_blocking=True) for f, t in tables.items()}
            self._keep = [up, freq]
            for (a, b), event in zip(self.ranges, self.events, strict=True):
                for c, s in zip((e[0] for e in entries), stages, strict=True):
                    lo, hi = a * c.layer_bytes, b * c.layer_bytes
                    staging[s + lo : s + hi].copy_(c.data[lo:hi], non_blocking=True)
                for f, t in up.items():
                    rows = t[a:b].reshape(-1, t.shape[-1])
                    if kernel:
                        f.launch(staging, rows, buf, freq, most[f])
                    else:
                        f.reference(staging, tables[f][a:b].reshape(-1, t.shape[-1]), buf, rotary)
                event.record(self.side)

    def mark(self) -> None:
        """Called right after a step that waits on this request's events was launched: the
        next :meth:`stream` holds back until that step is past its waits before recording the
        events again (whatever the driver's rule for when a graph's wait node reads its event)."""
        if self.cuda:
            import torch

            self._issued = torch.cuda.Event()
            self._issued.record(torch.cuda.current_stream(self.buffer.ctx_keys.device))

    def _stage(self, nbytes: int) -> torch.Tensor:
        """The device staging area, grown (never shrunk) to ``nbytes``."""
        import torch

        if self.staging is None or self.staging.numel() < nbytes:
            if self.side is not None:
                self.side.synchronize()  # the old area may still be read by the last gathers
            self.staging = torch.empty(
                max(nbytes, STAGE_ALIGN), dtype=torch.uint8, device=self.buffer.ctx_keys.device
            )
        return self.staging


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
