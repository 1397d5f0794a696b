"""Group commit: the ledger operations asked for while one transaction is on its way to the
disk go together into the next one, so a batch of 256 jobs in flight pays one fsync (and one
thread hop) for many writes instead of one each.

No timer and no background task: the first caller *leads*, running every operation queued
so far in one transaction in a worker thread; whatever arrives meanwhile waits, and the
leader hands the next batch to the first of those waiters when its own is done. An idle
ledger commits at once; a busy one batches by itself. Each operation returns (or raises)
only once the transaction that holds it has committed, with the durability it asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread
import attrs

__all__ = ["GroupCommit", "Operation"]

T = TypeVar("T")
C = TypeVar("C")


@attrs.define(eq=False)
class Operation(Generic[C]):
    """One queued call on the connection, and how it ended."""

    fn: Callable[[C], Any]
    durable: bool
    result: Any = None
    error: BaseException | None = None
    finished: bool = False
    woken: anyio.Event = attrs.field(factory=anyio.Event)


class GroupCommit(Generic[C]):
    """Runs operations in batches through ``commit`` (blocking: it runs in a worker thread,
    runs each operation's ``fn``, setting its ``result`` or ``error``, and commits, fsyncing
    when any operation of the batch is durable)."""

    def __init__(self, commit: Callable[[Sequence[Operation[C]]], None]) -> None:
        self._commit = commit
        self._queue: list[Operation[C]] = []
        self._leading = False
        #: Transactions committed, and of those, the ones that had to reach the disk.
        self.commits = 0
        self.durable_commits = 0

    async def run(self, fn: Callable[[C], T], *, durable: bool) -> T:
        """``fn(connection)`` in the next transaction; its result once that committed."""
        op: Operation[C] = Operation(fn, durable)
        self._queue.append(op)
        # Shielded: an operation that was asked for must land, or the ledger would lie after
        # Ctrl-C; and a leader must hand over, or the waiters behind it would wait forever.
        with anyio.CancelScope(shield=True):
            if self._leading:
                await op.woken.wait()  # done, or handed the lead
            if not op.finished:
                await self._lead(op)
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    async def _lead(self, mine: Operation[C]) -> None:
        self._leading = True
        try:
            while not mine.finished:
                batch, self._queue = self._queue, []
                try:
                    await anyio.to_thread.run_sync(self._commit, batch)
                except BaseException as exc:  # the commit itself broke: every op fails with it
                    for op in batch:
                        op.error = op.error or exc
                self.commits += 1
                self.durable_commits += any(op.durable for op in batch)
                for op in batch:
                    op.finished = True
                    op.woken.set()
        finally:
            if self._queue:
                self._queue[0].woken.set()  # the next leader: _leading stays True for it
            else:
                self._leading = False
