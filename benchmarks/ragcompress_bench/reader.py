"""The reader side of the benchmark: one prefill per (contender, example) gives the time to
first token, the greedy answer and the gold answer's log-likelihood.

The prompt is exactly the generator's (``Generator.layout``, a :class:`~ragcompress.prompt.PromptLayout`),
so what is scored is what the library would prefill.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.models.compat import cache_kwargs
from ragcompress.types import Passage

if TYPE_CHECKING:
    import argparse

    from ragcompress.generate import Generator

__all__ = ["ReadResult", "add_dtype_option", "read"]


def add_dtype_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--dtype`` for a benchmark's reader (auto: bfloat16 on CUDA, float32 on CPU)."""
    parser.add_argument(
        "--dtype",
        default=default,
        choices=("auto", "float32", "bfloat16", "float16"),
        help="reader dtype (auto: bfloat16 on CUDA, float32 on CPU; bfloat16 halves a 1.5B "
        f"reader's time on CPUs with avx512_bf16; default {default})",
    )


@dataclass(frozen=True, slots=True)
class ReadResult:
    answer: str
    gold_logprob: float  # mean log-prob per gold-answer token, given the prompt
    ttft_ms: float  # prefill of the whole prompt + the first greedy token
    prompt_tokens: int


def read(
    gen: Generator, question: str, passages: Sequence[Passage], gold: str, max_new_tokens: int
) -> ReadResult:
    """Prefill the prompt once; score ``gold`` on top of it; crop back and decode greedily.

    Scoring the gold answer after the prefill and then cropping the cache to the prompt costs a
    few tokens instead of a second prefill; the greedy continuation is unchanged by it.
    """
    import torch
    from transformers import DynamicCache

    lm = gen.lm
    ids = gen.layout.prompt_ids([p.text for p in passages], question)
    gen.check_length(len(ids), max_new_tokens)
    gold_ids = list(gen.tokenizer(" " + gold.strip(), add_special_tokens=False)["input_ids"]) or [
        gen.tokenizer.eos_token_id
    ]
    stops = gen.stop_ids
    dev = lm.device
    cache = DynamicCache(config=lm.config)
    with torch.inference_mode():
        start = time.perf_counter()
        out = lm(
            input_ids=torch.tensor([ids], device=dev),
            **cache_kwargs(lm, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        last = out.logits[0, -1].float()
        first = int(last.argmax())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ttft = (time.perf_counter() - start) * 1e3
        # log p(gold_1 | prompt) from the prefill, the rest from one extra forward over gold[:-1]
        logps = [float(torch.log_softmax(last, -1)[gold_ids[0]])]
        if len(gold_ids) > 1:
            g = lm(
                input_ids=torch.tensor([gold_ids[:-1]], device=dev), **cache_kwargs(lm, cache), use_cache=True
            )
            lp = torch.log_softmax(g.logits[0].float(), -1)
            logps += [float(lp[i, t]) for i, t in enumerate(gold_ids[1:])]
            cache.crop(-(len(gold_ids) - 1))  # back to the prompt alone
        tokens: list[int] = []
        token = first
        for _ in range(max_new_tokens):
            if token in stops:
                break
            tokens.append(token)
            step = lm(
                input_ids=torch.tensor([[token]], device=dev), **cache_kwargs(lm, cache), use_cache=True
            )
            token = int(step.logits[0, -1].argmax())
    answer = str(gen.tokenizer.decode(tokens, skip_special_tokens=True)).strip()
    return ReadResult(answer, sum(logps) / len(logps), ttft, len(ids))
