"""The partial forward's position-masked flash kernel (Triton interpreter on the CPU) against a
dense softmax per head: positions that grow with the slot (``concat``, where whole tiles skip the
mask and the loop stops early) and positions that do not (every tile masked), group sizes that
do and do not divide the kernel's row block, and several row blocks; then ``recompute_slots``
through it against the packed SDPA blocks on tiny Llama, Qwen2 and Gemma 3 (whose local layers
keep the blocks). The bounds it is cut with never hide a visible slot. The interpreted checks
run in a fresh process: Triton's nested jit helpers only run interpreted when TRITON_INTERPRET=1
is set before triton is first imported."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.assembly import flash_packed
from ragcompress.kv.assembly.flash_packed import BLOCK_M, BLOCK_N, flash_bounds
from tests.support.interpret import run_interpreted

KERNEL_CASES = [(True, 4, 400, 90), (True, 3, 300, 120), (False, 4, 200, 70), (True, 1, 150, 150)]


def _reference(query, key, value, q_pos, k_pos, scale):
    """(n, heads, D): each query head over its KV head's keys, hidden where k_pos > q_pos."""
    group = query.shape[0] // key.shape[0]
    k = key.repeat_interleave(group, dim=0).float()
    v = value.repeat_interleave(group, dim=0).float()
    logits = (query.float() @ k.transpose(1, 2)) * scale
    logits = logits.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
    return (logits.softmax(-1) @ v).transpose(0, 1)


def _case(slots, k, kv_heads, group, monotone, seed=0, d=16):
    """``(positions, chosen, query (heads, k, d), key, value (kv_heads, slots, d))`` on the CPU,
    fp32; the query laid out as a transformers forward hands it over (token-major memory)."""
    g = torch.Generator().manual_seed(seed)
    positions = torch.arange(slots) if monotone else torch.randint(0, slots // 2, (slots,), generator=g)
    if monotone:  # runs of repeated positions, as evicted chunks leave
        positions = positions - (positions % 7 == 3).long()
    chosen = torch.randperm(slots, generator=g)[:k].sort().values
    query = torch.randn(kv_heads * group, k, d, generator=g)
    # keys and values as a buffer layer holds them: (slots, kv_heads, D) viewed head-major
    key = torch.randn(slots, kv_heads, d, generator=g).transpose(0, 1)
    value = torch.randn(slots, kv_heads, d, generator=g).transpose(0, 1)
    return positions, chosen, query.transpose(0, 1).contiguous().transpose(0, 1), key, value


def check_kernel(monotone: bool, group: int, slots: int, k: int) -> None:
    """(run interpreted) ``position_flash`` == a dense softmax per head."""
    from ragcompress.kv.assembly._position_flash import position_flash

    positions, chosen, query, key, value = _case(slots, k, 2, group, monotone)
    q_pos = positions[chosen]
    bounds = flash_bounds(positions, chosen, group, BLOCK_M, BLOCK_N)
    assert bounds.shape == (-(-k * group // BLOCK_M), 2)
    if monotone:
        assert (bounds[1:, 0] > 0).any()  # some blocks really skip the mask over whole tiles
    got = position_flash(query, key, value, q_pos, positions, bounds, 0.25)
    want = _reference(query, key, value, q_pos, positions, 0.25)
    assert got.shape == (k, 2 * group, 16)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def check_recompute(family: str, monotone: bool) -> None:
    """(run interpreted) ``recompute_slots`` through the kernel == through the packed SDPA
    blocks (what the CPU runs): the same K/V written at every layer."""
    from transformers import DynamicCache

    from ragcompress.kv.assembly._position_flash import position_flash
    from ragcompress.kv.assembly.recompute import SlotMap, recompute_slots
    from ragcompress.models.arch import arch_for
    from tests.support import tiny

    model = getattr(tiny, f"make_tiny_{family}")(512, seed=3)
    n_slots = 260
    g = torch.Generator().manual_seed(1)
    shape = (1, 2, n_slots, arch_for(model).head_dim)
    layers = [tuple(torch.randn(shape, generator=g) for _ in "kv") for _ in model.model.layers]
    positions = torch.arange(n_slots) if monotone else torch.randperm(n_slots, generator=g) // 2
    tokens = torch.randint(0, 512, (n_slots,), generator=g)
    slots = SlotMap(positions, tokens, torch.arange(8, n_slots), n_slots - 8)
    chosen = (torch.randperm(n_slots - 8, generator=g)[:90] + 8).sort().values
    caches = []
    jobs = []
    for kernel in (position_flash, None):
        # what packed_job finds on this "device": the kernel, or none (the SDPA blocks)
        flash_packed.flash_kernel = lambda device, kernel=kernel: kernel  # type: ignore[assignment]
        jobs.append(type(flash_packed.packed_job(model, positions, chosen, torch.float32)).__name__)
        # no config: every layer a plain dynamic one (a local layer of the config would keep a window)
        cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in layers])
        recompute_slots(model, cache, slots, chosen)
        caches.append(cache)
    assert jobs == ["FlashPacked", "Packed"]
    for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    assert not torch.equal(caches[0].layers[-1].values, layers[-1][1])  # something was recomputed


_CHECKS = """
import sys
from tests.kv.assembly.test_flash_packed import KERNEL_CASES, check_kernel, check_recompute
if sys.argv[1] == "kernel":
    for case in KERNEL_CASES:
        check_kernel(*case)
else:
    for family in ("llama", "qwen2", "gemma3"):
        check_recompute(family, sys.argv[2] == "concat")
"""


def test_kernel_matches_a_dense_softmax():
    run_interpreted(_CHECKS, "kernel")


@pytest.mark.parametrize("order", ["concat", "unordered"])
def test_recompute_through_the_kernel_matches_the_sdpa_blocks(order):
    run_interpreted(_CHECKS, "recompute", order)


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("group", [1, 4, 6])
def test_bounds_never_hide_a_visible_slot(monotone, group):
    """Below ``lo`` every row of the block sees every slot; at or past ``hi`` none does."""
    positions, chosen, *_ = _case(1000, 300, 1, group, monotone, seed=group)
    bounds = flash_bounds(positions, chosen, group, BLOCK_M, BLOCK_N)
    tok = torch.arange(chosen.numel()).repeat_interleave(group)  # row -> token, token-major
    visible = positions[None, :] <= positions[chosen][tok][:, None]  # (rows, slots)
    for b, (lo, hi) in enumerate(bounds.tolist()):
        rows = visible[b * BLOCK_M : (b + 1) * BLOCK_M]
        assert lo % BLOCK_N == 0 and 0 <= lo <= hi <= 1000
        assert rows[:, :lo].all() and not rows[:, hi:].any()
        if monotone:
            assert rows[:, hi - 1].any()  # and the loop stops at the last slot any row sees


@pytest.mark.gpu
@pytest.mark.parametrize("monotone", [True, False], ids=["concat", "unordered"])
def test_gpu_bf16_kernel_at_head_dim_128(monotone):
    """Compiled, bf16, the 8B shape's heads (32 over 8, head_dim 128), 3,000 slots: the kernel
    == a dense fp32 softmax per head to bf16 precision."""
    from ragcompress.kv.assembly._position_flash import position_flash

    positions, chosen, *tensors = _case(3000, 450, 8, 4, monotone, d=128)
    query, key, value = (t.cuda().bfloat16() for t in tensors)
    positions, chosen = positions.cuda(), chosen.cuda()
    bounds = flash_bounds(positions, chosen, 4, BLOCK_M, BLOCK_N)
    got = position_flash(query, key, value, positions[chosen], positions, bounds, 128**-0.5).float()
    want = _reference(query, key, value, positions[chosen], positions, 128**-0.5)
    assert ((got - want).norm() / want.norm()) < 1e-2
