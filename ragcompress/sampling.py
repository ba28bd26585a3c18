"""How the next token is chosen, and where an answer stops: shared by every path and engine.

:class:`Sampling` is a request's decoding settings (greedy by default). :func:`pick_token` chooses
one token from a row of logits; the eager decode loop (:meth:`ragcompress.generate.Generator.iter_tokens`)
and the fast engine (:class:`ragcompress.kv.fast.FastGenerator`) both call it, so the same
settings and seed give the same tokens on both wherever their logits agree. :func:`request_rng`
makes the request's ``torch.Generator``: seeded from ``Sampling.seed`` (the same seed, the same
answer on the same engine and device) or, without one, from the OS's entropy.

Stop strings work on text, not tokens: :class:`StopScanner` watches the decoded text as it grows,
ends the answer at the first stop string (which is trimmed off) and, while streaming, holds back
any tail that may be the start of a stop string, so nothing of one is ever shown.

Importing this module is cheap: torch is imported only when a token is picked.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["GREEDY", "Sampling", "StopScanner", "check_sampling", "pick_token", "request_rng", "trim_at_stop"]


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Sampling.{name} must be a number, got {type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request.

    ``temperature``: 0 is greedy (the argmax, the default), > 0 samples from
    ``softmax(logits / temperature)``; ``top_k``: keep only the k most likely tokens (0: all);
    ``top_p``: keep the smallest set of most likely tokens whose probability reaches ``top_p``
    (1: all); ``seed``: seeds the request's random generator (None: a fresh random seed per
    request); ``stop``: strings that end the answer (the first one found is cut off with
    everything after it). Greedy decoding ignores ``top_k``, ``top_p`` and ``seed``.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        t = _number(self.temperature, "temperature")
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"Sampling.temperature must be a finite number >= 0 (0: greedy), got {t!r}")
        p = _number(self.top_p, "top_p")
        if not 0 < p <= 1:
            raise ValueError(f"Sampling.top_p must be in (0, 1] (1: off), got {p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise TypeError(f"Sampling.top_k must be an int, got {type(self.top_k).__name__}")
        if self.top_k < 0:
            raise ValueError(f"Sampling.top_k must be >= 0 (0: off), got {self.top_k}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"Sampling.seed must be an int or None, got {type(self.seed).__name__}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"Sampling.seed must be in [0, 2**63), got {self.seed}")
        stop = self.stop
        if isinstance(stop, str):  # a lone string would be read as one stop per character
            raise TypeError("Sampling.stop must be a tuple of strings, not a str: write stop=('\\n',)")
        if not isinstance(stop, Sequence):
            raise TypeError(f"Sampling.stop must be a tuple of strings, got {type(stop).__name__}")
        for s in stop:
            if not isinstance(s, str):
                raise TypeError(f"Sampling.stop must hold strings, got {type(s).__name__}")
            if not s:
                raise ValueError("Sampling.stop: stop strings must be non-empty")
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", float(p))

    @property
    def greedy(self) -> bool:
        """True when the next token is always the argmax (``temperature == 0``)."""
        return self.temperature == 0.0


#: The default: greedy decoding, no stop strings.
GREEDY = Sampling()


def check_sampling(sampling: object, name: str = "sampling") -> Sampling:
    """``sampling`` itself, or :data:`GREEDY` for None; anything else is a ``TypeError``."""
    if sampling is None:
        return GREEDY
    if not isinstance(sampling, Sampling):
        raise TypeError(f"{name} must be a ragcompress.Sampling or None, got {type(sampling).__name__}")
    return sampling


def request_rng(sampling: Sampling, device: torch.device | str = "cpu") -> torch.Generator | None:
    """The random generator of one request on ``device`` (None when decoding is greedy)."""
    import torch

    if sampling.greedy:
        return None
    seed = sampling.seed if sampling.seed is not None else random.SystemRandom().randrange(2**63)
    return torch.Generator(device=device).manual_seed(seed)


def pick_token(logits: torch.Tensor, sampling: Sampling, rng: torch.Generator | None) -> int:
    """The next token id from ``logits`` (vocab,) (any float dtype, on any device).

    Greedy: ``argmax`` (exactly the token the greedy loops always chose). Otherwise the
    logits are divided by the temperature, filtered by ``top_k`` then ``top_p`` and one token
    is drawn by inverting the cumulative distribution at one uniform number from ``rng``
    (one draw per token whatever the vocabulary, so a seed replays the same answer). The
    distribution is inverted in token-id order, not in rank order: two engines whose logits
    differ by rounding (the eager model and the fast engine) rank near-tied tokens differently,
    which would hand the same uniform number to another token; in id order rounding moves the
    cumulative sums only by as much as it moves the probabilities.
    """
    import torch

    if sampling.greedy:
        return int(logits.argmax())
    if rng is None:
        raise ValueError("pick_token: a sampling request needs its random generator (request_rng)")
    scaled = logits.float() / sampling.temperature
    # Most likely first; stable so that tied tokens keep id order and a seed replays exactly.
    order = torch.argsort(scaled, descending=True, stable=True)
    ranked = scaled[order]
    if 0 < sampling.top_k < ranked.numel():
        ranked = ranked[: sampling.top_k]
    keep = ranked.numel()
    if sampling.top_p < 1.0:
        # keep a token while the mass before it is below top_p: the most likely one always stays
        probs = torch.softmax(ranked, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        keep = max(int((before < sampling.top_p).sum()), 1)
    ids = torch.sort(order[:keep]).values  # the kept tokens, in id order
    cdf = torch.cumsum(torch.softmax(scaled[ids], dim=-1), dim=-1)
    u = torch.rand((), generator=rng, device=rng.device, dtype=torch.float32).to(cdf.device) * cdf[-1]
    i = min(int(torch.searchsorted(cdf, u.reshape(1), right=True)), ids.numel() - 1)
    return int(ids[i])


def trim_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``(text up to the first stop string, whether one was found)``; the earliest occurrence
    of any stop string wins."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


class StopScanner:
    """Stop-string handling over a growing text (the streamed answer).

    :meth:`feed` takes the next piece of text and returns what is safe to show: up to the
    first stop string once one is complete (:attr:`stopped` is then True and the caller stops
    decoding), otherwise everything except a tail that could still grow into a stop string.
    :meth:`flush` returns that held tail once the answer has ended without a stop string.
    Shown text joined is exactly ``trim_at_stop(full text)[0]``.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(stop)
        self.stopped = False
        self._text = ""  # everything fed
        self._shown = 0  # characters of _text already returned

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self._text += piece
        # Shown text never starts a stop string (a possible start is held back), so the first
        # one can only begin in the unshown part.
        start = self._shown
        head, found = trim_at_stop(self._text[start:], self.stop)
        if found:
            self.stopped = True
            return self._take(start + len(head))
        return self._take(len(self._text) - self._held_tail())

    def flush(self) -> str:
        return "" if self.stopped else self._take(len(self._text))

    def _held_tail(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        text, best = self._text, 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _take(self, end: int) -> str:
        end = max(end, self._shown)
        out = self._text[self._shown : end]
        self._shown = end
        return out
