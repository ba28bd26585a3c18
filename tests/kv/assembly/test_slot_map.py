"""The slot map the ``blend`` modes recompute over (positions, token ids, recomputable slots,
owning chunk) against a per-chunk reference, for dense chunks and for chunks whose heads kept
different tokens (knorm), on the first request and on a repeated one (the per-chunk part is then
reused)."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.assemble import concat_starts
from ragcompress.kv.assembly.recompute import slot_map
from ragcompress.kv.presses import KnormPress

from ..conftest import PASSAGES
from .test_assembly_modes import answerer


def reference(prefix_len, chunks, starts):
    """``(positions, tokens, candidates, owners)`` built chunk by chunk, slot by slot."""
    positions, tokens, owners = list(range(prefix_len)), [-1] * prefix_len, [-1] * prefix_len
    for j, (c, start) in enumerate(zip(chunks, starts, strict=True)):
        held = torch.stack([layer.positions.long() for layer in c.layers])  # (L, h, n)
        ids = c.token_ids.tolist()
        for i in range(held.shape[-1]):
            hi, lo = int(held[..., i].max()), int(held[..., i].min())
            positions.append(start + hi - c.base_offset)
            tokens.append(ids[hi - c.base_offset] if hi == lo else -1)
            owners.append(j)
    cand = [i for i, t in enumerate(tokens) if t >= 0]
    return [torch.tensor(x) for x in (positions, tokens, cand, owners)]


@pytest.mark.parametrize("presses", [(), (KnormPress(0.5),)], ids=["dense", "knorm"])
def test_slot_map_matches_a_per_slot_reference(reader, tokenizer, presses):
    kv = answerer(reader, tokenizer, None, presses=presses)
    chunks, _ = kv.cache.get_or_encode(PASSAGES)
    prefix_len = 5
    starts = concat_starts(prefix_len, chunks)
    want = reference(prefix_len, chunks, starts)
    if presses:  # some slots hold different tokens per head and are not recomputable
        assert (want[1][prefix_len:] == -1).any()
    for _ in range(2):  # the second call reuses each chunk's part
        got = slot_map(prefix_len, chunks, starts, "cpu")
        for a, b in zip((got.positions, got.tokens, got.candidates, got.passages), want, strict=True):
            assert torch.equal(a, b)
        assert got.chunk_slots == len(want[0]) - prefix_len


def test_slot_map_of_no_chunks():
    got = slot_map(3, [], [], "cpu")
    assert got.positions.tolist() == [0, 1, 2] and got.tokens.tolist() == [-1] * 3
    assert got.candidates.numel() == 0 and got.chunk_slots == 0
