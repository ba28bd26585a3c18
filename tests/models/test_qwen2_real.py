"""Qwen2.5-Coder-0.5B-Instruct (real weights, ``ragcompress models fetch qwen2.5-coder-0.5b-instruct``):
the Qwen2 family (QKV biases, RoPE theta 1e6, chat template) on real weights. A cached chunk
reproduces a fresh prefill's logits, the fast engine (its CPU reference kernels) answers several
chunks like the eager KV path, and ``ragcompress demo --kv --reader`` answers. Slow; skipped
where the model is not in ``$RAGCOMPRESS_HOME`` (``.ci/run`` fetches none: a fresh CI machine
skips them; one where the model was fetched runs them, ~1.5 CPU-minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import torch

from ragcompress.models import fetch as model_fetch

READER = "qwen2.5-coder-0.5b-instruct"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not model_fetch.is_fetched(READER), reason=f"run `ragcompress models fetch {READER}` first"
    ),
]

QUESTION = "Which river flows through the city of Lyon?"
PASSAGES = [
    "Lyon is a city in France. The Rhone and the Saone meet in Lyon; the Rhone flows south to Arles.",
    "Warsaw is the capital of Poland; the Vistula river runs through the city.",
    "Chopin was born in 1810 near Warsaw and left Poland at the age of twenty.",
]


@pytest.fixture(scope="module")
def gen() -> Any:
    from ragcompress.generate import Generator

    return Generator(model=READER, device="cpu", dtype="float32", max_new_tokens=8)


def test_real_qwen2_chunk_reproduces_a_fresh_prefill(gen):
    from ragcompress.kv.context import prepare_context
    from ragcompress.kv.encode.encoder import ChunkEncoder
    from ragcompress.models.arch import arch_for
    from ragcompress.models.compat import cache_kwargs

    lm: Any = gen.lm
    arch = arch_for(lm)
    assert arch.family == "qwen2" and arch.qkv_bias and arch.local_window is None
    enc = ChunkEncoder.from_generator(gen)
    layout: Any = enc.layout
    text = " ".join(PASSAGES)
    chunk = enc.encode([text])[0]
    q = layout.question_ids(QUESTION)
    with torch.inference_mode():
        fresh = lm(input_ids=torch.tensor([layout.prompt_ids([text], QUESTION)])).logits[0, -len(q) :]
        ctx = prepare_context(lm, layout, [chunk], q)
        phys = ctx.cache.get_seq_length()
        got = lm(
            input_ids=torch.tensor([q]),
            position_ids=torch.arange(ctx.position, ctx.position + len(q))[None],
            cache_position=torch.arange(phys, phys + len(q)),
            **cache_kwargs(lm, ctx.cache),
            **ctx.step_kwargs(phys, len(q)),
        ).logits[0]
    # fp32 through 24 layers: the chunk's keys and values come from a separate forward (other
    # matmul shapes, other summation orders); measured here 3e-5 nats at most. Positions off by
    # one (a RoPE bug) move them by 1.1 nats: 5e-4 sits well between the two.
    torch.testing.assert_close(got.log_softmax(-1), fresh.log_softmax(-1), atol=5e-4, rtol=0)
    assert torch.equal(got.argmax(-1), fresh.argmax(-1))


def test_real_qwen2_fast_engine_answers_several_chunks_like_the_eager_path(gen):
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.fast.answer import FastKVAnswerer
    from ragcompress.kv.presses import KVzipPress, QuantizePress

    # uncompressed, then KVzip-evicted and int4 chunks (in another order): the engine's own
    # gather, re-rotation and dequantization against the eager path's
    cases = [((), PASSAGES), ((KVzipPress(ratio=0.5), QuantizePress(bits=4, group_size=32)), PASSAGES[::-1])]
    for presses, passages in cases:
        eager = KVAnswerer.from_generator(gen, presses=presses)
        fast = FastKVAnswerer.from_generator(gen, presses=presses, capacity=512, max_question=64)
        want, got = eager.answer(QUESTION, passages), fast.answer(QUESTION, passages)
        assert got.token_ids == want.token_ids and len(want.token_ids) > 0
        assert got.stats.extra["engine"] == "fast" and got.stats.extra["chunks"] == len(passages)


def test_real_qwen2_demo_kv_answers_as_json(tmp_path):
    # A subprocess, as a user runs it: anything printed besides the JSON lines would break them.
    proc = subprocess.run(
        [sys.executable, "-m", "ragcompress.cli", "demo", "--kv", "--reader", READER, "--json",
         "--limit", "1", "--max-new-tokens", "8", "--cache-dir", str(tmp_path / "chunks")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["path"] == "kv" and rec["answer"].strip() and 0 < rec["new_tokens"] <= 8
    assert rec["chunks_encoded"] > 0 and rec["question"]
