"""The StaticCache + compiled-forward anchor of ``bench ttft`` on CPU: its wiring (context
prefilled once into a StaticCache, the question against it) gives a full prefill's first token.

On CPU the forward is compiled with ``backend="eager"`` (TorchDynamo traces it, no Inductor code
generation, no CUDA graphs): that checks that the StaticCache path traces; ``mode="reduce-overhead"``
itself needs a GPU and runs only in the benchmark. No timing is checked."""

from __future__ import annotations

import pytest
import torch
from ragcompress_bench.ttft import build_model
from ragcompress_bench.ttft_static import static_cache_row
from ragcompress_bench.ttft_timing import Clock, alternating


@pytest.mark.parametrize("compile", ["none", "eager"])
def test_static_cache_anchor_gives_the_full_prefills_first_token(compile) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", "cpu", torch.float32)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(100, model.config.vocab_size, (70,), generator=g)
    question = torch.randint(100, model.config.vocab_size, (6,), generator=g).tolist()
    with torch.inference_mode():
        full = model(input_ids=torch.cat([ids, torch.tensor(question)])[None], use_cache=False).logits[0, -1]
    row = static_cache_row(model, ids, question, Clock(model.device, 1, 2), compile, warmup_calls=2)
    assert "hf_static_error" not in row, row.get("hf_static_error")
    assert row["hf_static_first_token"] == int(full.argmax())
    assert row["hf_static_ms"] > 0
    assert (row["hf_static_compile_s"] is None) == (compile == "none")


def test_static_cache_anchor_names_a_bad_compile_choice() -> None:
    model = build_model("tiny", "cpu", torch.float32)
    row = static_cache_row(model, torch.arange(100, 120), [101, 102], Clock(model.device, 1, 1), "max")
    assert row["hf_static_ms"] is None and "compile must be one of" in row["hf_static_error"]


def test_alternating_runs_take_turns_and_give_each_its_median() -> None:
    """The diagnostic scripts' A/B: within each round every run goes once, in order, and each
    run's result is the median of its own rounds."""
    order: list[str] = []
    clock = Clock(torch.device("cpu"), warmup=0, repeats=1)
    medians = alternating({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, clock, rounds=3)
    assert order == ["a", "b"] * 3
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
