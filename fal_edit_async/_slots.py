"""A first-come, first-served bound on how many tasks hold a slot at once.

:class:`anyio.CapacityLimiter` makes two checkpoints per acquisition, even of a free token
(one for cancellation, one that yields to the loop in a shielded cancel scope), and a batch
acquired three of them per job (its pipeline, its jobs, its downloads): measurable when a
batch runs hundreds of jobs at once.
:class:`Slots` takes a free slot without suspending and suspends only to wait for one, which
is all the batch pipeline needs. Cancelling a waiting task leaves the queue as if it had never
waited; a slot granted to a task cancelled before it resumed is handed on, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType

__all__ = ["Slots"]


class Slots:
    """At most ``total`` holders; waiters are served in the order they came."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"total must be at least 1, not {total}")
        self._total = total
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def total(self) -> int:
        """How many may hold a slot at once; lowering it below those held is allowed (new
        holders wait until enough slots come back)."""
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"total must be at least 1, not {value}")
        self._total = value
        self._wake()

    @property
    def used(self) -> int:
        """How many slots are held now."""
        return self._used

    async def acquire(self) -> None:
        """Take a slot, waiting for one when none is free."""
        if self._used < self._total and not self._waiters:
            self._used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted as the task was cancelled: the next one gets it
            else:  # still queued, unless a wake-up already dropped it as cancelled
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back."""
        if self._used <= 0:
            raise RuntimeError("release() without a slot held")
        self._used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._used < self._total:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += 1
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
