"""Gates and waiters: how tests hold the emulator still and wait for it, without sleeping.

Both are plain asyncio futures (aiohttp.web runs on asyncio only). A :class:`Gate` is a
turnstile that is open by default; a :class:`Waiters` set wakes each waiter once its predicate
holds, checked whenever the emulator reports a change, so no one ever polls.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

__all__ = ["Gate", "Waiters"]


class Gate:
    """A turnstile: while open everyone passes; while held only released permits pass.

    Args:
        on_change: called whenever the number of waiters changes, so the emulator can wake
            tests waiting for "n things held at this gate".
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._open = True
        self._permits = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        """How many callers are blocked at the gate right now."""
        return len(self._waiters)

    @property
    def is_open(self) -> bool:
        """True when callers pass without a permit."""
        return self._open

    def hold(self) -> None:
        """Block everyone who arrives from now on (and drop unused permits)."""
        self._open = False
        self._permits = 0

    def release(self, n: int | None = None) -> None:
        """Let ``n`` callers through (waiting ones first), or open the gate when ``n`` is None."""
        if n is None:
            self._open = True
            n = len(self._waiters)
        while n > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1
        if not self._open:
            self._permits += n
        self._on_change()

    def try_pass(self) -> bool:
        """Pass without waiting if the gate is open or a permit is left; False otherwise."""
        if self._open:
            return True
        if self._permits:
            self._permits -= 1
            return True
        return False

    async def passage(self) -> None:
        """Return once the gate lets this caller through."""
        if self.try_pass():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._on_change()
        try:
            await waiter
        finally:
            if waiter in self._waiters:  # cancelled while waiting
                self._waiters.remove(waiter)
            self._on_change()


class Waiters:
    """Futures that complete once their predicate holds; :meth:`check` is called on changes."""

    def __init__(self) -> None:
        self._pending: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return as soon as ``predicate()`` is true (immediately if it already is)."""
        if predicate():
            return
        future = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._pending.append(entry)
        try:
            await future
        finally:
            if entry in self._pending:
                self._pending.remove(entry)

    def check(self) -> None:
        """Wake every waiter whose predicate now holds; cheap when nobody waits."""
        if not self._pending:
            return
        still = []
        for predicate, future in self._pending:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._pending = still
