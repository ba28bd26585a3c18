"""The fast engine's local sliding-window layers (Gemma 3): the window is by logical position
(docs/design.md, "Local sliding-window layers"), each layer re-rotates chunks with its own RoPE
table, and the buffer knows each slot's position. CPU: torch references and the Triton kernels
in the interpreter; tests/gpu/test_fast_window_gpu.py runs them compiled, in graphs, in bf16."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import EagerStep, FastGenerator, StaticKVBuffer
from ragcompress.kv.fast.step import DecoderStep
from ragcompress.kv.fast.write import write_batch
from ragcompress.models.arch import arch_for
from ragcompress.models.rope import Rotary, rerotate
from tests.support.interpret import run_interpreted
from tests.support.tiny import greedy_logits, make_tiny_gemma3

from .test_fast_path import _interpreted, _separate_chunks, _split, gathered, mixed_chunks, sample_request


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = make_tiny_gemma3(len(tokenizer), seed=3)
    return (model, *sample_request(len(tokenizer)))


def _question_logits(model, prefix, passages, question) -> torch.Tensor:
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=4, step=EagerStep(model))
    fast.load(*_split(model, prefix, passages))
    fast.prefill([question])
    assert fast.last_logits is not None
    return fast.last_logits[0].clone()


def test_the_window_is_what_makes_the_step_a_fresh_prefill(setup, monkeypatch):
    """Window 6 over a 54-token context: with the local layers' window the step gives a fresh
    prefill's logits; attending over the whole context at those layers lands far off."""
    model, prefix, passages, question = setup
    assert arch_for(model).local_window == 6
    ref = greedy_logits(model, prefix + [t for p in passages for t in p] + question)[-1]
    got = _question_logits(model, prefix, passages, question)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    attend = DecoderStep.attend

    def unwindowed(self, q, li, io):  # type: ignore[no-untyped-def]
        buf = io.buffer
        return io.attention(
            q,
            buf.ctx_keys[:, li],
            buf.ctx_values[:, li],
            buf.q_keys[li],
            buf.q_values[li],
            io.meta,
            self.scale,
        )

    monkeypatch.setattr(DecoderStep, "attend", unwindowed)
    off = _question_logits(model, prefix, passages, question)
    monkeypatch.setattr(DecoderStep, "attend", attend)
    assert (off - ref).abs().max() > 100 * (got - ref).abs().max() + 1e-2


def test_slot_positions_follow_moves_and_evictions(setup):
    """Every written slot's logical position == the eager assembly's (slot_map): chunks moved,
    one evicted by half, packed and stored, dense and int4; a resident prefix keeps its own."""
    from ragcompress.kv.assembly.recompute import slot_map

    model, prefix, passages, _ = setup
    items = mixed_chunks(model, prefix, passages)
    fast = FastGenerator(model, capacity=128, max_question=8, max_new_tokens=4)
    assert fast.buffer.positions and isinstance(fast.rotary, tuple)
    write_batch(fast.buffer, items[0][1], [c for _, c in items[1:]], fast.rotary)
    from ragcompress.kv.presses.knorm import KnormPress
    from ragcompress.kv.presses.quantize import QuantizePress

    _, dense = _separate_chunks(model, prefix, passages)
    _, quant = _separate_chunks(model, prefix, passages, (KnormPress(ratio=0.25), QuantizePress(4, 8)))
    chunks = [dense[0], quant[1], dense[2], quant[0], quant[2], dense[1]]  # behind mixed_chunks'
    assert any(bool((layer.positions != c.layers[0].positions).any()) for c in quant for layer in c.layers)
    starts, pos = [], len(prefix)
    for c in chunks:
        starts.append(pos)
        pos += c.length
    want = slot_map(len(prefix), chunks, starts, "cpu").positions
    n = fast.buffer.ctx_len
    assert n == len(want) and torch.equal(fast.buffer.ctx_pos[:n], want)


def test_each_layer_rotates_chunks_with_its_own_table(setup, monkeypatch):
    """Local and global layers re-rotate a moved chunk with their own bases: the gather
    (reference, and the Triton kernels in the interpreter) == per-layer re-rotation."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from ragcompress.kv.fast.write import gather

    model, prefix, passages, _ = setup
    arch = arch_for(model)
    pre, chunks = _split(model, prefix, passages)
    fast = FastGenerator(model, capacity=64, max_question=8, max_new_tokens=4)
    shape = (fast.buffer.layers, fast.buffer.kv_heads, fast.buffer.head_dim)
    ref, got = (StaticKVBuffer(*shape, capacity=64, region=4) for _ in "ab")
    items = [("prefix", pre), ("chunk", chunks[2])]  # moved 22 positions earlier
    gather(gathered(ref, items), fast.rotary)
    gather(gathered(got, items), fast.rotary, kernels=_interpreted("_gather"))
    delta, n = len(prefix) - chunks[2].base_offset, chunks[2].num_tokens
    for li in range(arch.num_layers):
        want = rerotate(chunks[2].keys[:, li], delta, Rotary.from_arch(arch, li))
        at = slice(pre.num_tokens, pre.num_tokens + n)
        torch.testing.assert_close(ref.ctx_keys[at, li], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.ctx_keys[: ref.ctx_len], ref.ctx_keys[: ref.ctx_len], atol=2e-5, rtol=1e-5)
    items = mixed_chunks(model, prefix, passages)  # quantized forms too
    ref, got = (StaticKVBuffer(*shape, capacity=128, region=4) for _ in "ab")
    gather(gathered(ref, items), fast.rotary)
    gather(gathered(got, items), fast.rotary, kernels=_interpreted("_gather"))
    n = ref.ctx_len
    torch.testing.assert_close(got.ctx_keys[:n], ref.ctx_keys[:n], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.ctx_values[:n], ref.ctx_values[:n], atol=2e-5, rtol=1e-5)


def test_an_assembled_context_needs_its_slot_positions(setup):
    model, prefix, passages, _ = setup
    fast = FastGenerator(model, capacity=64, max_question=8, max_new_tokens=4)
    pre, _ = _split(model, prefix, passages)
    layers = [(pre.keys[:, li].transpose(0, 1), pre.values[:, li].transpose(0, 1)) for li in range(3)]
    with pytest.raises(ValueError, match="positions"):
        fast.load_context(layers, len(prefix))
    assert fast.load_context(layers, len(prefix), torch.arange(len(prefix))) == len(prefix)
    assert torch.equal(fast.buffer.ctx_pos[: len(prefix)], torch.arange(len(prefix)))


_WINDOW_CHECK = """
import torch
from ragcompress.kv.fast._window import window_context
from ragcompress.kv.fast.step_meta import window_span

g = torch.Generator().manual_seed(3)
n, kvh, grp, d, cap, window, scale = 5, 2, 3, 16, 90, 30, 0.3
h = kvh * grp
q = torch.randn(n, h, d, generator=g)
ck = torch.randn(cap, 3, kvh, d, generator=g)[:, 1]  # a layer's strided view of the buffer
cv = torch.randn(cap, 3, kvh, d, generator=g)[:, 1]
# gaps, repeats (ape stacks chunks at the same positions), not sorted
pos = [*range(40), *range(30, 55, 2), *range(54, 29, -2), *range(60, 84)]
ctx_pos = torch.tensor(pos + [0] * (cap - len(pos)))
q_pos, ctx_len = torch.arange(76, 81), torch.tensor([80], dtype=torch.int32)
span = window_span(q_pos, ctx_pos, ctx_len, window)
# the earliest query (76) sees positions > 46: from slot 49 (position 48) to the last filled, 79
assert span.tolist() == [49, 80], span
assert window_span(q_pos + 500, ctx_pos, ctx_len, window).tolist()[0] == window_span(
    q_pos + 500, ctx_pos, ctx_len, window
).tolist()[1]  # nothing in the window: an empty span
for segs in (1, 3, 7, 40):  # more segments than slots in the span: some empty
    o, lse = window_context(q, ck, cv, q_pos, ctx_pos, span, segs, window, scale)
    o = o.view(segs, n * grp, kvh, d)
    for t in range(n):
        for hh in range(h):
            kv, r = hh // grp, t * grp + hh % grp
            vis = (q_pos[t] - ctx_pos[:80]) < window
            sc = (ck[:80, kv] @ q[t, hh] * scale).masked_fill(~vis, float("-inf"))
            # the segments merged by log-sum-exp == one masked softmax over the whole context
            w = torch.softmax(lse[:, kv, r], 0)
            got = (w[:, None] * o[:, r, kv]).sum(0)
            total = torch.logsumexp(lse[:, kv, r], 0)
            torch.testing.assert_close(total, torch.logsumexp(sc, 0), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got, torch.softmax(sc, 0) @ cv[:80, kv], atol=1e-4, rtol=1e-4)
            assert torch.isfinite(o[:, r, kv]).all()
    if segs == 40:
        assert (lse == float("-inf")).any()  # empty segments weigh nothing
"""


def test_window_kernel_matches_a_masked_softmax_per_segment():
    """The local layers' context pass (Triton, interpreted), its segments cut over the step's
    window span and merged, == one softmax over the context's keys within the window by
    position, with gapped, repeated and unsorted positions and empty segments (-inf); the span
    is the tight one. In a fresh process: Triton's reductions only run
    interpreted when TRITON_INTERPRET=1 is set before triton is first imported."""
    run_interpreted(_WINDOW_CHECK)


_FUSED_CHECK = """
import sys

import torch
from ragcompress.kv.fast import FastGenerator, FusedStep
from tests.kv.test_fast_path import _split
from tests.support import tiny

FusedStep.unsupported = staticmethod(lambda model: None)  # off CUDA: the kernels interpreted
family = sys.argv[1]
m = getattr(tiny, f"make_tiny_{family}")(1024, seed=3)
rng = torch.Generator().manual_seed(5)
prefix, q = torch.randint(5, 1024, (7,), generator=rng).tolist(), [5, 901, 77, 402, 13, 260]
passages = [torch.randint(5, 1024, (n,), generator=rng).tolist() for n in (11, 6)]
ref = tiny.greedy_logits(m, prefix + passages[0] + passages[1] + q)[-1]
step = FusedStep(m)
# q/k/v as one GEMM (Qwen2: with its biases stacked), the gate in the act*mul kernel (Gemma 3: GELU)
assert all(w is not None for w in step._qkv + step._gate_up)
if family == "qwen2":
    attn = m.model.layers[1].self_attn
    biases = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    assert torch.equal(step._qkv_bias[1], biases)
fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, step=step)
fast.load(*_split(m, prefix, passages))
fast.prefill([q])
torch.testing.assert_close(fast.last_logits[0], ref, atol=1e-4, rtol=1e-4)
"""


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_fused_step_runs_like_a_fresh_prefill(family):
    """The fused step's Gemma 3 layer (sandwich norms and (1 + w) RMSNorm in the add+norm kernel,
    per-head QK-norms, the tanh-GELU gate in the act*mul kernel, windowed attention) and Qwen2's
    (q/k/v with biases as one GEMM): a fresh prefill's logits in fp32, the Triton kernels run in
    the interpreter."""
    run_interpreted(_FUSED_CHECK, family)
