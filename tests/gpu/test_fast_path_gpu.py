"""The fast path on CUDA: graphs give the eager tokens, flash cascade and the Triton chunk write
agree with their torch references. The CPU side is tests/kv/test_fast_path.py. No tokenizer
here (the device machines have no packaged models): eager greedy decoding is written out."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast import (
    EagerStep,
    FastGenerator,
    FlashCascade,
    FusedStep,
    PackedChunk,
    ReferenceCascade,
    StaticKVBuffer,
    StepMeta,
    write_batch,
)
from ragcompress.kv.fast.gather_reference import gather_reference
from ragcompress.kv.fast.write import _kernel_runs, gather
from ragcompress.models.compat import cache_kwargs
from tests.conftest import make_tiny_llama
from tests.kv.test_fast_path import _prefill, _split, gathered, mixed_chunks
from tests.support.tiny import assert_untouched, param_snapshot

VOCAB = 1024


def _eager_greedy(model, ctx: list[int], question: list[int], n: int) -> list[int]:
    cache = _prefill(model, ctx)
    out, step, pos = [], question, len(ctx)
    with torch.inference_mode():
        for _ in range(n):
            ids = torch.tensor([step], device=model.device)
            p = torch.arange(pos, pos + len(step), device=model.device)
            logits = model(
                input_ids=ids,
                **cache_kwargs(model, cache),
                use_cache=True,
                position_ids=p[None],
                cache_position=p,
                logits_to_keep=1,
            ).logits
            pos += len(step)
            step = [int(logits[0, -1].argmax())]
            out.append(step[0])
    return out


def _first_logits(fast: FastGenerator) -> torch.Tensor:
    """fp32 logits (vocab,) of the first question of the last step."""
    logits = fast.last_logits
    assert logits is not None
    return logits[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _bf16_error_budget(m, ids: list[int]) -> tuple[torch.Tensor, float]:
    """Last-token logits of an fp32 forward of the bf16 model's weights, and how far
    transformers' own bf16 forward lands from them (the rounding a bf16 path cannot avoid)."""
    import copy

    x = torch.tensor([ids], device="cuda")
    with torch.inference_mode():
        ref = copy.deepcopy(m).float()(input_ids=x).logits[0, -1].float()
        hf = m(input_ids=x).logits[0, -1].float()
    return ref, _rel(hf, ref)


@pytest.fixture(scope="module")
def data():
    rng = torch.Generator().manual_seed(7)
    prefix = torch.randint(5, VOCAB, (9,), generator=rng).tolist()
    passages = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (17, 5, 23)]
    questions = [torch.randint(5, VOCAB, (n,), generator=rng).tolist() for n in (6, 11, 3)]
    return prefix, passages, questions


@pytest.mark.gpu
def test_gpu_graphs_same_tokens_fp32(data):
    prefix, passages, questions = data
    model = make_tiny_llama(VOCAB, seed=3).cuda()
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=12, max_batch=3, buckets=(16,))
    assert fast.graphs
    fast.load(*_split(model, prefix, passages))
    ctx = prefix + [t for p in passages for t in p]
    want = [_eager_greedy(model, ctx, q, 12) for q in questions]
    assert fast.generate(questions, 12) == want
    assert [fast.generate([q], 12)[0] for q in questions] == want  # batch 1 graphs too


@pytest.mark.gpu
def test_gpu_graphs_read_each_requests_staged_arguments(data):
    # the step's arguments are staged in pinned memory and copied by the graph itself: each
    # replay must see the values written for its own request (questions of every length, one
    # token included, whose prefill shares the decode step's graph), never a previous one's
    prefix, passages, questions = data
    model = make_tiny_llama(VOCAB, seed=3).cuda()
    fast = FastGenerator(model, capacity=64, max_question=16, max_new_tokens=6, buckets=(1, 16))
    fast.load(*_split(model, prefix, passages))
    ctx = prefix + [t for p in passages for t in p]
    asked = [*questions, [questions[0][0]], questions[1][:2], [questions[2][0]]]
    want = [_eager_greedy(model, ctx, q, 6) for q in asked]
    for _ in range(2):  # twice over: nothing left over from the first round changes a token
        assert [fast.generate([q], 6)[0] for q in asked] == want


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("splits", [1, 4, 7])
def test_gpu_flash_cascade_matches_reference(dtype, splits):
    torch.manual_seed(0)
    b, t, r, cap, h, kvh, d = 3, 7, 12, 300, 16, 4, 128
    dev = "cuda"
    q = torch.randn(b * t, h, d, device=dev, dtype=dtype)
    ck, cv = (torch.randn(cap, 2, kvh, d, device=dev, dtype=dtype)[:, 1] for _ in range(2))
    ok, ov = (torch.randn(b * r, kvh, d, device=dev, dtype=dtype) for _ in range(2))
    meta = StepMeta(
        b,
        t,
        r,
        cap,
        torch.tensor([211], dtype=torch.int32, device=dev),
        torch.tensor([t, t + 3, t + 5], dtype=torch.int32, device=dev),
        splits=splits,
        group=h // kvh,
    )
    meta.refresh()
    ref = ReferenceCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    got = FlashCascade()(q, ck, cv, ok, ov, meta, d**-0.5).float()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
def test_gpu_triton_write_matches_reference():
    model = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    fast = FastGenerator(model, capacity=700, max_question=8, max_new_tokens=4)
    k = torch.randn(333, 2, 2, 16, device="cuda", dtype=torch.bfloat16)
    chunk = PackedChunk(k, torch.randn_like(k), length=400, base_offset=9)
    a, b = (StaticKVBuffer(2, 2, 16, 700, 4, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    for buf in (a, b):
        buf.ctx_keys.fill_(float("nan"))
        buf.reserve(5, 50)
    assert _kernel_runs(a, fast.rotary)
    gather(gathered(a, [("chunk", chunk)]), fast.rotary)  # on CUDA: the Triton gather
    gather_reference(gathered(b, [("chunk", chunk)]), fast.rotary)
    torch.testing.assert_close(a.ctx_keys[5:338], b.ctx_keys[5:338], atol=1e-2, rtol=1e-2)
    assert torch.equal(a.ctx_values[5:338], chunk.values)
    assert a.ctx_keys[338:].isnan().all() and a.ctx_keys[:5].isnan().all()  # nothing else written


@pytest.mark.gpu
def test_gpu_bf16_fast_path_logits_close_to_eager(data):
    prefix, passages, questions = data
    m = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, buckets=(16,))
    assert isinstance(fast.attention, FlashCascade)
    fast.load(*_split(m, prefix, passages))
    q = questions[0]
    fast.prefill([q])
    got = _first_logits(fast)
    ctx = prefix + [t for p in passages for t in p]
    with torch.inference_mode():
        want = m(input_ids=torch.tensor([ctx + q], device="cuda")).logits[0, -1].float()
    assert ((got - want).norm() / want.norm()).item() < 2e-2


@pytest.mark.gpu
def test_gpu_fused_kernels_match_torch_modules():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, rotate_half

    from ragcompress.kv.fast._triton import add_rmsnorm, rope_write

    torch.manual_seed(1)
    dt, n, h, kvh, d = torch.bfloat16, 7, 8, 2, 128
    q, k, v = (torch.randn(n, x * d, device="cuda", dtype=dt) for x in (h, kvh, kvh))
    ang = torch.randn(n, d // 2, device="cuda") * 50
    cos, sin = (f(torch.cat([ang, ang], -1)).to(dt) for f in (torch.cos, torch.sin))
    slots = torch.tensor([3, 0, 9, 2, 5, 11, 7], device="cuda")
    kb, vb = (torch.full((12, kvh, d), float("nan"), device="cuda", dtype=dt) for _ in range(2))
    qo = rope_write(q, k, v, cos, sin, slots, kb, vb, h, kvh, d)
    c, s = cos[:, None], sin[:, None]
    qr, kr = q.view(n, h, d), k.view(n, kvh, d)
    # same formula and roundings as apply_rotary_pos_emb; the bf16 casts may differ by an ulp
    torch.testing.assert_close(qo, qr * c + rotate_half(qr) * s, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(kb[slots], kr * c + rotate_half(kr) * s, atol=1e-2, rtol=1e-2)
    assert torch.equal(vb[slots], v.view(n, kvh, d))
    assert kb[[1, 4, 6, 8, 10]].isnan().all()
    x, delta = torch.randn(n, 4096, device="cuda", dtype=dt), torch.randn(n, 4096, device="cuda", dtype=dt)
    norm = LlamaRMSNorm(4096, eps=1e-5).cuda().to(dt)
    norm.weight.data.normal_()
    res, out = add_rmsnorm(x, delta, norm.weight, 1e-5)
    assert torch.equal(res, x + delta)
    torch.testing.assert_close(out, norm(x + delta), atol=0, rtol=1e-2)  # rsqrt may differ by an ulp


@pytest.mark.gpu
def test_gpu_skinny_gemm_matches_cublas():
    """The Triton GEMM that runs a step's weight products at <= 64 rows: cuBLAS's bf16 product
    up to accumulation order, with a bias, whole or as partial sums over parts of K, on the real
    shapes (Llama-3-8B's and Qwen2.5's down_proj, Qwen2.5's o_proj, gate/up and q/k/v) and
    ragged ones; skinny_rows, o_splits and down_splits out of range refused at build."""
    from ragcompress.kv.fast._gemm import skinny_linear, skinny_partials

    torch.manual_seed(0)
    shapes = (
        (32, 4096, 14336), (32, 3584, 18944), (1, 3584, 3584), (32, 37888, 3584), (64, 4608, 3584),
        (64, 96, 300), (7, 40, 256),
    )  # fmt: skip
    for m, n, k in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        want = torch.nn.functional.linear(x, w)
        torch.testing.assert_close(skinny_linear(x, w), want, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(
            skinny_linear(x, w, b), torch.nn.functional.linear(x, w, b), atol=2e-2, rtol=2e-2
        )
        for splits in (2, 4):
            got = skinny_partials(x, w, splits).sum(0).to(torch.bfloat16)
            torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    m = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    with pytest.raises(ValueError, match="skinny_rows must be in"):
        FusedStep(m, skinny_rows=65)
    with pytest.raises(ValueError, match="down_splits must be"):
        FusedStep(m, down_splits=3)
    with pytest.raises(ValueError, match="o_splits must be"):
        FusedStep(m, o_splits=0)


@pytest.mark.gpu
def test_gpu_fused_step_matches_unfused(data):
    """Fused and unfused bf16 steps are each as close to an fp32 forward (same weights) as
    transformers' own bf16 forward is: bf16 rounding, not a kernel error, is the difference."""
    prefix, passages, questions = data
    m = make_tiny_llama(VOCAB, seed=3, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    m = m.cuda().to(torch.bfloat16)
    ref, hf_err = _bf16_error_budget(m, prefix + [t for p in passages for t in p] + questions[0])
    steps = (
        FusedStep(m), FusedStep(m, share_weights=True), FusedStep(m, skinny_rows=0),
        FusedStep(m, down_splits=1, o_splits=1), EagerStep(m),
    )  # fmt: skip
    for step in steps:
        fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, buckets=(16,), step=step)
        fast.load(*_split(m, prefix, passages))
        fast.prefill(questions[:1])
        assert _rel(_first_logits(fast), ref) <= 2 * hf_err + 1e-3, step


@pytest.mark.gpu
def test_gpu_one_launch_write_matches_the_reference(data):
    """write_batch of every chunk form (packed/stored, bf16/knorm+int4, moved positions,
    evicted tokens) in one launch per form == gather_reference; nothing past the context."""
    prefix, passages, _q = data
    m = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    (_, pre), *items = mixed_chunks(m, prefix, passages)
    fast = FastGenerator(m, capacity=128, max_question=8, max_new_tokens=4)
    got = fast.buffer
    ref = StaticKVBuffer(got.layers, got.kv_heads, got.head_dim, 128, 4, dtype=torch.bfloat16, device="cuda")
    for b in (got, ref):
        b.ctx_keys.fill_(float("nan"))
        b.ctx_values.fill_(float("nan"))
    assert _kernel_runs(got, fast.rotary)
    write_batch(got, pre, [c for _, c in items], fast.rotary)
    gather_reference(gathered(ref, [("prefix", pre), *items]), fast.rotary)
    n = ref.ctx_len
    assert (got.ctx_len, got.next_position, int(got.ctx_len_t)) == (n, ref.next_position, n)
    for x, y in ((got.ctx_keys, ref.ctx_keys), (got.ctx_values, ref.ctx_values)):
        assert not x[:n].isnan().any() and x[n:].isnan().all()
        torch.testing.assert_close(x[:n], y[:n], atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
def test_gpu_graph_follows_context_length(data):
    """One captured bf16 graph (flash, split-KV segments recut on the device at each replay),
    contexts of different lengths in turn: logits close to a full eager forward every time."""
    prefix, passages, questions = data
    m = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, buckets=(16,))
    assert fast.graphs and isinstance(fast.attention, FlashCascade)
    q = questions[0]
    for use in (passages, passages[:1], passages[1:2], passages):
        fast.load(*_split(m, prefix, use))
        fast.prefill([q])
        got = _first_logits(fast)
        ref, hf_err = _bf16_error_budget(m, prefix + [t for p in use for t in p] + q)
        assert _rel(got, ref) <= 2 * hf_err + 1e-3


@pytest.mark.gpu
def test_gpu_silu_mul_and_stacked_weights():
    """SiLU·mul rounds like LlamaMLP; the fused step stacks q/k/v and gate/up into tensors of
    its own (or, shared, reads the model's in place) and never touches the model's parameters."""
    from ragcompress.kv.fast import default_step
    from ragcompress.kv.fast._triton import silu_mul

    torch.manual_seed(2)
    gu = torch.randn(7, 2 * 3000, device="cuda", dtype=torch.bfloat16)
    want = torch.nn.functional.silu(gu[:, :3000]) * gu[:, 3000:]
    torch.testing.assert_close(silu_mul(gu), want, atol=0, rtol=1e-2)
    m = make_tiny_llama(VOCAB, seed=3).cuda().to(torch.bfloat16)
    before = param_snapshot(m)
    step = default_step(m)
    assert isinstance(step, FusedStep)
    assert len(step._qkv) == len(step._gate_up) == len(m.model.layers)
    attn, mlp = m.model.layers[1].self_attn, m.model.layers[1].mlp
    qkv, gate_up = step._qkv[1], step._gate_up[1]
    assert qkv is not None and gate_up is not None
    assert torch.equal(qkv, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert torch.equal(gate_up, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
    assert qkv.data_ptr() != attn.q_proj.weight.data_ptr()  # a copy of its own
    shared = FusedStep(m, share_weights=True)  # separate allocations: no copy, GEMMs one by one
    assert all(w is None for w in shared._qkv + shared._gate_up)
    assert_untouched(m, before)


@pytest.mark.gpu
def test_gpu_dependent_launches_change_no_bit(data, monkeypatch):
    """The step's kernels launched with programmatic dependent launch (Hopper and later, the
    default there) give the same logits, bit for bit, as launched one after another
    (RAGCOMPRESS_PDL=0): each waits for the kernel before before it reads, so nothing reads early."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability 9.0")
    prefix, passages, questions = data
    m = make_tiny_llama(VOCAB, seed=3, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    m = m.cuda().to(torch.bfloat16)
    logits = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("RAGCOMPRESS_PDL", flag)
        step = FusedStep(m)
        fast = FastGenerator(m, capacity=64, max_question=16, max_new_tokens=4, buckets=(16,), step=step)
        fast.load(*_split(m, prefix, passages))
        fast.prefill(questions[:1])
        logits[flag] = _first_logits(fast).clone()
        assert fast.generate(questions[:1], 4) == fast.generate(questions[:1], 4)
    assert torch.equal(logits["0"], logits["1"])
