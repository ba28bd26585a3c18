"""A chunk held in (pinned) host memory, laid out to stream to the GPU layer by layer.

:class:`HostChunk` packs a :class:`~ragcompress.kv.chunk.KVChunk` once, when it enters the host
tier: every layer's tensors back to back in one byte buffer (page-locked where CUDA is present,
so that copies run on the copy engine while the GPU computes), layers one after the other, so a
run of layers is one contiguous range. Quantized chunks keep their codes and scales
(:class:`~ragcompress.kv.fast.host_forms.QuantForm`: ~1/4 of the bf16 bytes for int4); any other
layer class is stored as dense keys/values in the buffer's dtype
(:class:`~ragcompress.kv.fast.host_forms.DenseForm`).

:class:`~ragcompress.kv.fast.engine.FastGenerator` streams host chunks through
:mod:`ragcompress.kv.fast.stream`; written through :func:`~ragcompress.kv.fast.write.write_batch`
instead, a host chunk is copied to the device layer by layer before the one gather (correct, not
overlapped).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ragcompress.kv.fast.host_forms import DenseForm, HostForm, QuantForm
from ragcompress.kv.fast.packed import BufferChunk, PackedChunk

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.buffer import StaticKVBuffer
    from ragcompress.kv.fast.rows import GatherRows

__all__ = ["HostChunk"]

ALIGN = 16  # every tensor starts on 16 bytes: any scale dtype views it, copies stay wide


@dataclass(frozen=True, eq=False)
class HostChunk(BufferChunk):
    """``data`` (nbytes,) uint8 on the CPU: ``layers`` runs of ``layer_bytes`` bytes, each the
    tensors of ``form.specs(kv_heads, tokens, head_dim)`` at the byte ``offsets`` (tensors,)
    from the run's start. ``template`` (layers, F) int64: the chunk's gather table rows before
    a request's shift (see :mod:`~ragcompress.kv.fast.host_forms`)."""

    data: torch.Tensor
    form: HostForm
    layers: int
    kv_heads: int
    head_dim: int
    tokens: int
    layer_bytes: int
    offsets: tuple[int, ...]
    template: torch.Tensor
    length: int
    base_offset: int
    positions: torch.Tensor | None = None  # (tokens,) int64 kept positions, where not consecutive

    @property
    def num_tokens(self) -> int:
        return self.tokens

    @property
    def nbytes(self) -> int:
        return int(self.data.numel())

    def slot_positions(self) -> torch.Tensor | None:
        return self.positions

    @cached_property
    def pinned(self) -> bool:
        """Whether ``data`` is page-locked; asked once (a CUDA query): the streamer asks for
        every chunk of every request, on the path to the first token."""
        return bool(self.data.is_pinned())

    def check(self, buffer: StaticKVBuffer, what: str) -> None:
        got = (self.layers, self.kv_heads, self.head_dim)
        want = (buffer.layers, buffer.kv_heads, buffer.head_dim)
        if got != want:
            raise ValueError(f"{what} has (layers, kv_heads, head_dim) = {got}; the buffer {want}")
        if isinstance(self.form, DenseForm) and self.form.dtype != buffer.ctx_keys.dtype:
            raise ValueError(
                f"{what} holds {self.form.dtype} keys/values; the buffer {buffer.ctx_keys.dtype}"
            )

    def layer_tensors(self, layer: int, data: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Views of layer ``layer``'s tensors in ``data`` (default: this chunk's bytes; the
        streamer passes their copy in the staging area)."""
        src = self.data if data is None else data
        base = layer * self.layer_bytes
        out = []
        for off, (shape, dt) in zip(
            self.offsets, self.form.specs(self.kv_heads, self.tokens, self.head_dim), strict=True
        ):
            size = _nbytes(shape, dt)
            out.append(src[base + off : base + off + size].view(dt).view(shape))
        return out

    def gather_into(self, rows: GatherRows, slot: int, delta: int) -> None:
        """Non-streamed: each layer's views go to ``rows``, which copies them to the device."""
        from ragcompress.kv.kernels import QuantizedKV

        stacked = self.layers * self.kv_heads
        for li in range(self.layers):
            t = self.layer_tensors(li)
            head0 = li * self.kv_heads
            if isinstance(self.form, QuantForm):
                kc, ks, kz, vc, vs, vz = t
                kv = QuantizedKV(kc, ks, kz, vc, vs, vz, bits=self.form.bits, group=self.form.group)
                rows.add_quantized(kv, head0, slot, delta)
            else:
                rows.add_dense(t[0], t[1], slot * stacked + head0, self.tokens, stacked, delta)

    def to_packed(self, device: torch.device | str, dtype: torch.dtype) -> PackedChunk:
        """The chunk dense on ``device`` in ``dtype`` (keys at their encoding positions): codes
        and scales cross to the device as stored (int4: ~1/4 of the bf16 bytes) and are
        dequantized there. For a pool that copies a chunk in once."""
        from ragcompress.kv.kernels.quant_format import dequantize_keys, dequantize_values

        keys, values = [], []
        for li in range(self.layers):
            t = [x.to(device, non_blocking=True) for x in self.layer_tensors(li)]
            if isinstance(self.form, QuantForm):
                bits, group = self.form.bits, self.form.group
                t = [
                    dequantize_keys(t[0], t[1], t[2], bits, group),
                    dequantize_values(t[3], t[4], t[5], bits, group),
                ]
            keys.append(t[0])  # (kv_heads, n, D)
            values.append(t[1])
        pos = None if self.positions is None else self.positions.to(device)
        return PackedChunk.from_layers(keys, values, self.length, self.base_offset, device, dtype, pos)

    @classmethod
    def from_chunk(cls, chunk: KVChunk, dtype: torch.dtype, pin: bool | None = None) -> HostChunk:
        """Pack ``chunk``: quantized layers (all alike) as codes + scales, anything else as
        dense keys/values in ``dtype`` (the buffer's). ``pin``: page-lock the bytes (default:
        when CUDA is available)."""
        import torch

        form, tensors = _form_and_tensors(chunk, dtype)
        h, d, n, layers = chunk.kv_heads, chunk.head_dim, int(chunk.num_tokens), len(chunk.layers)
        specs = form.specs(h, n, d)
        offsets, pos = [], 0
        for shape, dt in specs:
            offsets.append(pos)
            pos += _align(_nbytes(shape, dt))
        pin = torch.cuda.is_available() if pin is None else pin
        data = torch.empty(pos * layers, dtype=torch.uint8, pin_memory=pin)
        for li, layer in enumerate(tensors):
            for off, (shape, dt), t in zip(offsets, specs, layer, strict=True):
                start = li * pos + off
                data[start : start + _nbytes(shape, dt)].view(dt).view(shape).copy_(t)
        table = torch.tensor(offsets, dtype=torch.long)[None] + pos * torch.arange(layers)[:, None]
        template = form.template(table, h, n, layers)
        from ragcompress.kv.fast.packed import held_positions

        # local sliding-window layers mask by each slot's position: keep it where a press evicted
        held = held_positions(chunk.layers)
        dense = torch.equal(held, torch.arange(n, dtype=held.dtype, device=held.device) + chunk.base_offset)
        return cls(
            data,
            form,
            layers,
            h,
            d,
            n,
            pos,
            tuple(offsets),
            template,
            chunk.length,
            chunk.base_offset,
            None if dense else held.cpu(),
        )


def _form_and_tensors(chunk: KVChunk, dtype: torch.dtype) -> tuple[HostForm, list[list[torch.Tensor]]]:
    """The chunk's form and its layers' tensors in that form's order."""
    got = [getattr(layer, "quantized_kv", lambda: None)() for layer in chunk.layers]
    kvs = [kv for kv in got if kv is not None]
    if kvs and len(kvs) == len(got):
        kinds = {(kv.bits, kv.group, kv.key_scale.dtype) for kv in kvs}
        if len(kinds) == 1 and all(kv.value_scale.dtype == kv.key_scale.dtype for kv in kvs):
            bits, group, sdt = kinds.pop()
            return QuantForm(bits, group, sdt), [list(kv.tensors()) for kv in kvs]
    dense = []
    for layer in chunk.layers:
        k, v, _ = layer.dense()
        dense.append([k.to(dtype), v.to(dtype)])
    return DenseForm(dtype), dense


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN
