"""A circuit breaker for one cache tier: a tier that keeps failing is skipped for a while.

Without it a dead Redis costs every chunk of every request the store's retries and timeouts
(about 0.7 s a chunk with the defaults), although the answer never depends on the tier: a
cache tier that cannot answer is a miss, and a write it cannot take is dropped.

States: *closed* (calls go through; ``failures`` consecutive failures open it), *open* (calls
are refused at once for the back-off period) and *half-open* (after the back-off one call,
the probe, goes through while the others are still refused; its success closes the breaker,
its failure opens it again for ``growth`` times the previous period, at most
``max_backoff_s``). The clock is a field so that tests move time instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ragcompress.kv.store.errors import StoreUnavailableError

__all__ = ["TIER_ERRORS", "CircuitBreaker", "CircuitOpenError"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a tier raises when it cannot do its job (server down or refusing, disk full or
# read-only, out of host or device memory: torch's OutOfMemoryError is a RuntimeError).
# ValueError and TypeError stay bugs of the caller and propagate.
TIER_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError, MemoryError)


class CircuitOpenError(StoreUnavailableError):
    """The breaker refused the call without trying the tier (it failed recently)."""


@dataclass
class CircuitBreaker:
    """Consecutive-failure breaker with exponential back-off; thread-safe.

    ``failures``: consecutive failed calls that open it. ``backoff_s``: the first open period;
    each failed probe multiplies it by ``growth``, up to ``max_backoff_s``. ``name`` goes into
    messages. Counters: ``calls`` (calls let through to the tier: the attempts that cost
    time), ``failed`` (those that raised a tier error), ``skipped`` (calls refused while open)
    and ``opened`` (times the breaker opened).
    """

    failures: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    growth: float = 2.0
    clock: Callable[[], float] = time.monotonic
    name: str = ""
    calls: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)
    opened: int = field(default=0, init=False)
    _streak: int = field(default=0, init=False, repr=False)
    _period: float = field(default=0.0, init=False, repr=False)
    _until: float | None = field(default=None, init=False, repr=False)  # None: closed
    _probing: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.failures, int) or self.failures < 1:
            raise ValueError(f"failures must be an integer >= 1, got {self.failures!r}")
        if not self.backoff_s > 0:
            raise ValueError(f"backoff_s must be positive, got {self.backoff_s!r}")
        if not self.max_backoff_s >= self.backoff_s:
            raise ValueError(
                f"max_backoff_s ({self.max_backoff_s!r}) must be >= backoff_s ({self.backoff_s!r})"
            )
        if not self.growth >= 1:
            raise ValueError(f"growth must be >= 1, got {self.growth!r}")
        self._period = self.backoff_s

    def copy(self, name: str) -> CircuitBreaker:
        """A fresh (closed, zero counters) breaker with these settings, named ``name``."""
        return dataclasses.replace(self, name=name)

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (a probe may go, or is under way)."""
        with self._lock:
            if self._until is None:
                return "closed"
            return "half-open" if self._probing or self.clock() >= self._until else "open"

    @property
    def retry_in_s(self) -> float:
        """Seconds until the next probe may go (0 when closed or due)."""
        with self._lock:
            return 0.0 if self._until is None else max(0.0, self._until - self.clock())

    def allow(self) -> bool:
        """Whether a call may go to the tier now; a True after the back-off makes it the probe,
        which must be followed by :meth:`succeeded` or :meth:`failed_now`."""
        with self._lock:
            if self._until is None:
                self.calls += 1
                return True
            if self._probing or self.clock() < self._until:
                self.skipped += 1
                return False
            self._probing = True
            self.calls += 1
            return True

    def succeeded(self) -> None:
        with self._lock:
            if self._until is not None:
                log.warning("cache tier %r answers again: breaker closed", self.name)
            self._streak, self._until, self._probing = 0, None, False
            self._period = self.backoff_s

    def failed_now(self, reason: object = "") -> None:
        with self._lock:
            self.failed += 1
            self._streak += 1
            if self._probing:  # the probe failed: back off longer
                self._period = min(self._period * self.growth, self.max_backoff_s)
            elif self._until is not None or self._streak < self.failures:
                return  # a call let through before the breaker opened, or still under the threshold
            self._probing = False
            self._until = self.clock() + self._period
            self.opened += 1
            period = self._period
        log.warning(
            "cache tier %r skipped for %.3g s after %d consecutive failures (last: %s)",
            self.name, period, self._streak, reason,
        )  # fmt: skip

    def _abandon(self) -> None:
        with self._lock:
            self._probing = False

    def call(self, fn: Callable[[], T], what: str = "call") -> T:
        """``fn()`` when allowed. Raises :class:`CircuitOpenError` without calling ``fn`` while
        open; a tier error from ``fn`` is logged (a warning naming the tier, ``what`` and the
        reason), recorded and re-raised as :class:`~ragcompress.kv.store.errors.StoreUnavailableError`
        (the original chained)."""
        if not self.allow():
            log.debug("cache tier %r: %s skipped (breaker open)", self.name, what)
            raise CircuitOpenError(f"cache tier {self.name!r} skipped for {self.retry_in_s:.3g} s: {what}")
        try:
            result = fn()
        except TIER_ERRORS as err:
            reason = f"{type(err).__name__}: {err}"
            log.warning("cache tier %r: %s failed: %s", self.name, what, reason)
            self.failed_now(reason)
            if isinstance(err, StoreUnavailableError):
                raise
            raise StoreUnavailableError(f"cache tier {self.name!r}: {what} failed: {reason}") from err
        except BaseException:
            # Not the tier's fault (a bad argument, an interrupt): no verdict on the tier, but a
            # probe slot must not stay taken, or the breaker would refuse calls forever.
            self._abandon()
            raise
        self.succeeded()
        return result

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "calls": self.calls,
            "failed": self.failed,
            "skipped": self.skipped,
            "opened": self.opened,
            "retry_in_s": self.retry_in_s,
        }
