"""An adaptive bound on jobs in flight: halve on rate limiting, creep back up on success.

Additive increase, multiplicative decrease, as TCP does it: each slot remembers the *epoch*
it was taken in, and only the first 429 of an epoch halves the level, so a burst of 429s from
jobs that were all sent at the old level counts once. Each successful submit adds
``1 / level``, about one slot per round of jobs. The level never exceeds the configured limit
and never drops below one; no clock is involved, so tests can drive it deterministically.
"""

from __future__ import annotations

import math
from types import TracebackType

from .._slots import Slots

__all__ = ["AdaptiveLimiter"]


class AdaptiveLimiter:
    """A capacity limiter whose size follows fal's rate limiting (AIMD)."""

    def __init__(self, limit: int, *, adaptive: bool = True) -> None:
        self.limit = limit
        self.adaptive = adaptive
        self._level = float(limit)
        self._epoch = 0
        self._slots = Slots(limit)
        #: The lowest level reached, and how many times the level was cut.
        self.lowest = limit
        self.decreases = 0
        self.in_use = 0
        self.peak = 0

    @property
    def level(self) -> int:
        """How many jobs may be in flight now."""
        return max(1, math.floor(self._level))

    def slot(self) -> _Slot:
        """``async with limiter.slot() as epoch``: hold one slot; ``epoch`` is what to report
        rate limiting against."""
        return _Slot(self)

    def rate_limited(self, epoch: int) -> None:
        """fal answered 429 to a request sent from a slot taken in ``epoch``."""
        if not self.adaptive or epoch != self._epoch:
            return
        self._epoch += 1
        self._level = max(1.0, self._level / 2)
        self.decreases += 1
        self.lowest = min(self.lowest, self.level)
        self._apply()

    def succeeded(self) -> None:
        """A submit went through: grow by about one slot per full round."""
        if not self.adaptive or self._level >= self.limit:
            return
        self._level = min(float(self.limit), self._level + 1 / self._level)
        self._apply()

    def _apply(self) -> None:
        # Lowering below the tokens in use is allowed: new acquisitions wait until enough return.
        self._slots.total = self.level


class _Slot:
    """One slot of an :class:`AdaptiveLimiter`, held inside ``async with`` (a class, not a
    generator: it is taken once per job)."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> int:
        limiter = self._limiter
        await limiter._slots.acquire()
        limiter.in_use += 1
        limiter.peak = max(limiter.peak, limiter.in_use)
        return limiter._epoch

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        limiter = self._limiter
        limiter.in_use -= 1
        limiter._slots.release()
