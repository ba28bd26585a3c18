"""How a host-resident chunk's layer bytes are laid out, and how one table row per (layer,
chunk) turns them into buffer rows.

A :class:`~ragcompress.kv.fast.host.HostChunk` keeps every layer's tensors back to back in one
pinned byte buffer, layers one after the other, so any run of layers is one contiguous range:
one host-to-device copy per chunk and layer group. Once those bytes sit in the device staging
area, the *same* gather kernels as the GPU-resident path (:mod:`ragcompress.kv.fast._gather`)
write them, driven by a table whose rows give the element offsets of each tensor in the staging
area. The table is built with a few tensor ops per chunk from a per-chunk template (offsets
within the chunk, one row per layer) plus a per-request shift (where the chunk landed in the
staging area, its slot and position delta): no Python work per layer.

A form is the layout of one layer: :class:`QuantForm` (int4/int8 codes + fp16 scales/zeros, the
:mod:`~ragcompress.kv.kernels.quant_format` layout) or :class:`DenseForm` (keys/values in the
buffer's dtype). Each form has a torch reference over the same table rows (CPU, and wherever the
kernel does not run), held to the kernels by the tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.buffer import StaticKVBuffer
    from ragcompress.models.rope import Rotary

__all__ = ["DenseForm", "HostForm", "QuantForm", "TensorSpec"]

#: (shape, dtype) of one tensor of a layer
TensorSpec = tuple[tuple[int, ...], "torch.dtype"]


class HostForm(ABC):
    """The byte layout of one layer of a host chunk and its gather table rows."""

    @abstractmethod
    def specs(self, kv_heads: int, tokens: int, head_dim: int) -> list[TensorSpec]:
        """The layer's tensors, in storage order."""

    @abstractmethod
    def template(self, offsets: torch.Tensor, kv_heads: int, tokens: int, layers: int) -> torch.Tensor:
        """Table rows (layers, F) int64 of a chunk whose tensors start at the byte ``offsets``
        (layers, tensors) from its first byte, before the request's shift."""

    @abstractmethod
    def shift(self, stage: int, slot: int, delta: int, stacked: int) -> list[int]:
        """What one request adds to each template column: the chunk's first byte lands at byte
        ``stage`` of the staging area, its tokens at context slot ``slot``, keys move by ``delta``;
        ``stacked`` = layers * kv_heads of the buffer."""

    @abstractmethod
    def launch(
        self,
        staging: torch.Tensor,
        table: torch.Tensor,
        buffer: StaticKVBuffer,
        freq: torch.Tensor,
        most: int,
    ) -> None:
        """The Triton gather of ``table`` (rows, F) on the device from ``staging`` (bytes,) uint8
        into the buffer's context; ``most``: the largest token count of a row."""

    @abstractmethod
    def reference(
        self, staging: torch.Tensor, table: torch.Tensor, buffer: StaticKVBuffer, rotary: Rotary
    ) -> None:
        """The same as :meth:`launch` in torch ops, table rows read on the host."""


def _units(specs: list[TensorSpec]) -> list[int]:
    """Bytes per element of each tensor (the streamer asks once per chunk and request, on the
    path to the first token: read from the dtype, no tensor made)."""
    return [dt.itemsize for _, dt in specs]


@dataclass(frozen=True)
class QuantForm(HostForm):
    """int4/int8 codes (uint8) and fp16 scales/zeros: kc, ks, kz, vc, vs, vz per layer (the
    ``_gather.QUANT_FIELDS`` columns)."""

    bits: int
    group: int
    scale_dtype: torch.dtype

    def specs(self, kv_heads: int, tokens: int, head_dim: int) -> list[TensorSpec]:
        import torch

        h, n, d, g = kv_heads, tokens, head_dim, self.group
        codes = ((h, n, d // 2 if self.bits == 4 else d), torch.uint8)
        keys = ((h, -(-n // g), d), self.scale_dtype)
        values = ((h, n, -(-d // g)), self.scale_dtype)
        return [codes, keys, keys, codes, values, values]

    def template(self, offsets: torch.Tensor, kv_heads: int, tokens: int, layers: int) -> torch.Tensor:
        import torch

        units = torch.tensor(_units(self.specs(1, 1, 2)), dtype=torch.long)
        rest = torch.zeros(layers, 5, dtype=torch.long)
        rest[:, 0], rest[:, 3] = tokens, kv_heads
        rest[:, 4] = torch.arange(layers) * kv_heads  # head0: layer l's heads of the stacked ones
        return torch.cat([offsets // units, rest], dim=1)

    def shift(self, stage: int, slot: int, delta: int, stacked: int) -> list[int]:
        return [stage // u for u in _units(self.specs(1, 1, 2))] + [0, slot, delta, 0, 0]

    def launch(
        self,
        staging: torch.Tensor,
        table: torch.Tensor,
        buffer: StaticKVBuffer,
        freq: torch.Tensor,
        most: int,
    ) -> None:
        from ragcompress.kv.fast._gather import gather_quantized

        gather_quantized(
            staging, staging.view(self.scale_dtype), buffer.ctx_keys, buffer.ctx_values, table, freq,
            buffer.layers * buffer.kv_heads, buffer.kv_heads, most, buffer.head_dim, self.bits, self.group,
        )  # fmt: skip

    def reference(
        self, staging: torch.Tensor, table: torch.Tensor, buffer: StaticKVBuffer, rotary: Rotary
    ) -> None:
        from ragcompress.kv.kernels.quant_format import dequantize_keys, dequantize_values
        from ragcompress.models.rope import rotate_by

        d, stacked = buffer.head_dim, buffer.layers * buffer.kv_heads
        heads_k = buffer.ctx_keys.view(-1, stacked, d)  # (capacity, layers * kv_heads, d)
        heads_v = buffer.ctx_values.view(-1, stacked, d)
        scales = staging.view(self.scale_dtype)
        for row in table.tolist():
            n, slot, delta, h, head0 = row[6:]
            specs = self.specs(h, n, d)
            t = [
                (staging if dt == staging.dtype else scales)[o : o + _numel(s)].view(s)
                for o, (s, dt) in zip(row[:6], specs, strict=True)
            ]
            cos, sin = rotary.cos_sin_of(delta, staging.device)
            keys = dequantize_keys(t[0], t[1], t[2], self.bits, self.group)
            values = dequantize_values(t[3], t[4], t[5], self.bits, self.group)
            tokens, heads = slice(slot, slot + n), slice(head0, head0 + h)
            heads_k[tokens, heads] = rotate_by(keys, cos, sin).transpose(0, 1).to(heads_k.dtype)
            heads_v[tokens, heads] = values.transpose(0, 1).to(heads_v.dtype)


@dataclass(frozen=True)
class DenseForm(HostForm):
    """Keys and values (kv_heads, n, head_dim) in the buffer's dtype: k, v per layer (the
    ``rows.DENSE_FIELDS`` columns: kv_heads runs of n rows, a token every ``stacked`` rows)."""

    dtype: torch.dtype

    def specs(self, kv_heads: int, tokens: int, head_dim: int) -> list[TensorSpec]:
        side = ((kv_heads, tokens, head_dim), self.dtype)
        return [side, side]

    def template(self, offsets: torch.Tensor, kv_heads: int, tokens: int, layers: int) -> torch.Tensor:
        import torch

        unit = _units(self.specs(1, 1, 1))[0]
        rest = torch.zeros(layers, 5, dtype=torch.long)
        rest[:, 0], rest[:, 3] = kv_heads * tokens, tokens
        rest[:, 1] = torch.arange(layers) * kv_heads  # dst_row of slot 0: layer l's first head
        rest[:, 4] = layers * kv_heads
        return torch.cat([offsets // unit, rest], dim=1)

    def shift(self, stage: int, slot: int, delta: int, stacked: int) -> list[int]:
        unit = _units(self.specs(1, 1, 1))[0]
        return [stage // unit, stage // unit, 0, slot * stacked, delta, 0, 0]

    def launch(
        self,
        staging: torch.Tensor,
        table: torch.Tensor,
        buffer: StaticKVBuffer,
        freq: torch.Tensor,
        most: int,
    ) -> None:
        from ragcompress.kv.fast._gather import gather_dense

        gather_dense(
            staging.view(self.dtype), buffer.ctx_keys, buffer.ctx_values, table, freq,
            most * buffer.kv_heads, buffer.head_dim,
        )  # fmt: skip

    def reference(
        self, staging: torch.Tensor, table: torch.Tensor, buffer: StaticKVBuffer, rotary: Rotary
    ) -> None:
        import torch

        from ragcompress.models.rope import rotate_by

        d, dev = buffer.head_dim, staging.device
        flat_k, flat_v = buffer.ctx_keys.view(-1, d), buffer.ctx_values.view(-1, d)
        src = staging.view(self.dtype)
        for k_off, v_off, rows, dst_row, delta, run, stride in table.tolist():
            keys, values = (
                src[k_off : k_off + rows * d].view(rows, d),
                src[v_off : v_off + rows * d].view(rows, d),
            )
            cos, sin = rotary.cos_sin_of(delta, dev)
            i = torch.arange(rows, device=dev)
            dst = dst_row + (i % run) * stride + torch.div(i, run, rounding_mode="floor")
            flat_k.index_copy_(0, dst, rotate_by(keys.float(), cos, sin).to(flat_k.dtype))
            flat_v.index_copy_(0, dst, values.to(flat_v.dtype))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
