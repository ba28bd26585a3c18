"""Zero-copy streaming: the gather kernel reads host chunks straight from pinned host memory.

With unified addressing, page-locked host memory is mapped into the device's address space at
the same address, so a kernel can load from it over PCIe. :class:`DirectHostStream` gives the
gather's table the chunks' own host addresses (as element offsets from a small device base)
instead of staging copies: per layer range, one kernel launch and no memcpy, so the host's
work per request no longer grows with chunks x ranges. The price: the loads are issued by SMs
(sharing them with the question's compute) and the bytes cross PCIe as the kernel's loads, not
as the copy engine's large transfers. ``ragcompress bench ttft`` times both (``kvzip_host_direct``).
Off CUDA, or for a chunk that is not pinned, it streams as :class:`HostStream` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.stream import STAGE_ALIGN, HostStream, RangeCopy

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.host import HostChunk

__all__ = ["DirectHostStream"]


@dataclass(eq=False)
class DirectHostStream(HostStream):
    """:class:`HostStream` without the staging copies (see the module docstring)."""

    group: int = 1
    _base: Any = field(default=None, init=False, repr=False)
    _direct: bool = field(default=False, init=False, repr=False)

    def stages(self, chunks: Sequence[HostChunk]) -> list[int]:
        """Byte offsets of the chunks' own (host) bytes from a device base, when all are pinned."""
        import torch

        self._direct = self.cuda and all(c.pinned for c in chunks)
        if not self._direct:
            return super().stages(chunks)
        if self._base is None:
            self._base = torch.empty(STAGE_ALIGN, dtype=torch.uint8, device=self.buffer.ctx_keys.device)
        # aligned allocations on both sides: the difference divides by any element size
        return [c.data.data_ptr() - self._base.data_ptr() for c in chunks]

    def copies(self, chunks: Sequence[HostChunk], stages: list[int]) -> Sequence[RangeCopy]:
        return [] if self._direct else super().copies(chunks, stages)

    def fetch(self, copies: Sequence[RangeCopy], i: int) -> torch.Tensor:
        if not self._direct:
            return super().fetch(copies, i)
        return self._base  # type: ignore[no-any-return]
