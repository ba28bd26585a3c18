"""``bench ttft`` columns for the chunks as the chunk cache hands them to the fast answerer.

The cold ``ragcompress_ms`` column writes :class:`~ragcompress.kv.fast.PackedChunk` s (every layer
in one block). A GPU-tier chunk cache holds :class:`~ragcompress.kv.chunk.KVChunk` s, one tensor
set per layer, which the buffer takes layer by layer: for a family with local sliding-window
layers (Gemma 3) those layers of chunks too far back for their window are not written
(:mod:`ragcompress.kv.fast.local_layers`). Columns, cold (every request writes its chunks):

* ``ragcompress_stored_ms``: the same dense K/V as stored chunks;
* ``ragcompress_stored_every_layer_ms`` (local-layer families only): the same with every layer of
  every chunk written, as before local layers were skipped: the baseline of that change.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["stored_rows"]


def stored_chunks(
    kv: list[tuple[Any, Any]], starts: list[int], sizes: list[int], presses: tuple[Any, ...] = ()
) -> list[Any]:
    """KVChunks cut out of the joint prefill's ``kv`` (per layer (kv_heads, ctx, d)), each layer
    through ``presses`` as the chunk cache would store it."""
    import torch

    from ragcompress.kv.chunk import DenseLayer, KVChunk
    from ragcompress.kv.key import ChunkKey

    label = "+".join(type(p).__name__ for p in presses) or "[]"
    out = []
    for i, (s, n) in enumerate(zip(starts, sizes, strict=True)):
        layers = []
        for li, (k, v) in enumerate(kv):
            pos = torch.arange(s, s + n, device=k.device).expand(k.shape[0], n).contiguous()
            layer: Any = DenseLayer(k[:, s : s + n].contiguous(), v[:, s : s + n].contiguous(), pos)
            for press in presses:
                layer = press(layer, layer_idx=li, attn=None)
            layers.append(layer)
        key = ChunkKey(model="bench", layout="bench", presses=label, tokens=str(i))
        # the token ids on the device too: a chunk on the CPU is a host-tier chunk (streamed)
        ids = torch.zeros(n, dtype=torch.long, device=kv[0][0].device)
        out.append(KVChunk(layers, ids, s, n, key, "bench"))
    return out


def stored_rows(
    fast: Any,
    prefix: Any,
    kv: list[tuple[Any, Any]],
    starts: list[int],
    sizes: list[int],
    question: list[int],
    clock: Callable[..., float],
    tokens: dict[str, int],
) -> dict[str, Any]:
    """The columns above; ``tokens`` gets each column's first token."""
    row: dict[str, Any] = {}
    try:
        chunks = stored_chunks(kv, starts, sizes)

        def run() -> int:
            fast.load(prefix, chunks)
            return int(fast.prefill([question])[0])

        row["ragcompress_stored_ms"] = round(clock(run), 3)
        tokens["ragcompress_stored"] = run()
        local = fast.buffer.local
        if local is not None:
            fast.buffer.local = None
            try:
                row["ragcompress_stored_every_layer_ms"] = round(clock(run), 3)
                tokens["ragcompress_stored_every_layer"] = run()
            finally:
                fast.buffer.local = local
    except Exception as exc:  # the other columns' numbers must survive
        traceback.print_exc()
        row["ragcompress_stored_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row
