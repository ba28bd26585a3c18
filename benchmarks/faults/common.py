"""What every fault scenario shares: the environment (tiny model, encoder, Redis) and a tally of
cases tried and held."""

from __future__ import annotations

import itertools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.faults import Outcome

__all__ = ["PASSAGES", "Env", "Tally", "make_env", "same_chunk"]

PASSAGES = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Danube flows through ten countries before reaching the Black Sea.",
    "Ada Lovelace wrote what is often called the first computer program.",
    "The Nile is the longest river in Africa.",
    "Mount Everest lies on the border of Nepal and China.",
    "Honey never spoils when it is stored sealed.",
    "Octopuses have three hearts and blue blood.",
]
SECRET = "a-benchmark-secret-of-32-chars!!"


@dataclass
class Env:
    """``tmp``: a scratch folder; ``model_dir``: the tiny model saved like a checkpoint (worker
    processes load it by path); ``lm``/``tok``/``encoder``: loaded in this process; ``redis``: a
    running :class:`~tests.support.redis_local.LocalRedis`. ``quick``: fewer cases (the tests)."""

    tmp: Path
    model_dir: str
    lm: Any
    tok: Any
    encoder: Any
    redis: Any
    quick: bool = False
    passages: list[str] = field(default_factory=lambda: list(PASSAGES))
    _serial: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def fresh(self, name: str) -> Path:
        """A path under ``tmp`` that does not exist yet."""
        return self.tmp / f"{name}-{next(self._serial)}"

    def tenant(self, name: str) -> str:
        """A Redis tenant no other case uses."""
        return f"{name}-{next(self._serial)}"

    def generator(self, max_new_tokens: int = 4) -> Any:
        from ragcompress.generate import Generator

        return Generator.from_model(self.lm, self.tok, max_new_tokens=max_new_tokens)


def make_env(tmp: Path, redis: Any, quick: bool = False) -> Env:
    """Save the tiny seeded Llama (with the packaged tokenizer) under ``tmp`` and load it back."""
    import torch

    from ragcompress.kv.encode.encoder import ChunkEncoder
    from ragcompress.models.load import load_reader, load_tokenizer
    from tests.support.tiny import make_tiny_llama

    torch.set_num_threads(1)
    model_dir = tmp / "tiny-model"
    tok = load_tokenizer()
    make_tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    lm, tok = load_reader(str(model_dir), "cpu")
    # One passage per batch: a chunk's bytes then do not depend on its neighbours in a batch.
    encoder = ChunkEncoder(lm, tok, max_batch_tokens=1)
    return Env(tmp, str(model_dir), lm, tok, encoder, redis, quick)


def same_chunk(a: Any, b: Any, atol: float = 0.0) -> bool:
    """Equal keys and token ids, and tensors equal (``atol=0``) or within ``atol``."""
    import torch

    if a.key != b.key or not torch.equal(a.token_ids.cpu(), b.token_ids.cpu()):
        return False
    if len(a.layers) != len(b.layers):
        return False
    for la, lb in zip(a.layers, b.layers, strict=True):
        ta, tb = la.tensors(), lb.tensors()
        if ta.keys() != tb.keys():
            return False
        for name, x in ta.items():
            y = tb[name]
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if atol == 0:
                ok = torch.equal(x.cpu(), y.cpu())
            else:
                ok = torch.allclose(x.float().cpu(), y.float().cpu(), atol=atol)
            if not ok:
                return False
    return True


Case = Callable[[], "str | None"]


class Tally:
    """Cases of one scenario: each is a function returning None when it holds, else what went
    wrong; an exception is a case that did not hold (its type and message are the reason)."""

    def __init__(self, case: str) -> None:
        self.outcome = Outcome(case)
        self.skipped: list[str] = []
        self._start = time.perf_counter()

    def run(self, name: str, fn: Case) -> bool:
        self.outcome.tried += 1
        try:
            problem = fn()
        except Exception as err:  # reported, never hidden
            where = traceback.extract_tb(err.__traceback__)[-1]
            problem = f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})"
        if problem is None:
            self.outcome.passed += 1
            return True
        self.outcome.failures.append(f"{name}: {problem}"[:400])
        return False

    def skip(self, name: str, why: str) -> None:
        """A case this machine cannot stage (not counted as tried)."""
        self.skipped.append(f"{name}: {why}")

    def done(self, **details: Any) -> Outcome:
        out = self.outcome
        out.seconds = time.perf_counter() - self._start
        out.throughput = out.passed / out.seconds if out.seconds else 0.0
        out.details = {**details, **({"skipped": self.skipped} if self.skipped else {})}
        return out
