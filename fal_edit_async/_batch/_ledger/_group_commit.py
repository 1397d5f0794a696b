"""Group commit: the ledger writes asked for in one turn of the event loop go into one
transaction, and the durable ones that committed while an fsync was on its way share the
next one, so 256 jobs in flight pay one fsync for many writes instead of one each.

The transaction itself runs on the event loop (the statements take microseconds, and a
SQLite connection shared with a worker thread made the loop wait for the GIL, and each write
wait a loop turn or two for its thread's answer: 20 ms a write at 256 in flight, four writes
a job). Only what may block on the disk, the fsync that makes a batch durable, runs in a
worker thread, one at a time. Each operation returns (or raises) only once the transaction
that holds it has committed, and a durable one once that transaction reached the disk.

Every so often a tidy-up (SQLite checkpointing its WAL) runs with the fsync, with no commit
beside it. An fsync that returns at once (a file system in memory, a disk that acknowledges from its
cache) is not worth a thread's two hand-offs, a loop turn each way: each is timed, and they
stay on the loop until ``_SLOW_SYNCS`` of them took longer than ``_SLOW_SYNC``, as the
downloads' writes do (``_downloads._InlineDisk``).

No background task: a commit is a callback of the loop, an fsync a call in its executor.
asyncio only, like the client (aiohttp is asyncio-only).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import attrs

from ..._exceptions import EventLoopError

__all__ = ["GroupCommit", "Operation"]

T = TypeVar("T")
C = TypeVar("C")

#: An fsync slower than this is waiting for a disk; after this many, they all go to threads.
_SLOW_SYNC = 0.0005
_SLOW_SYNCS = 2
#: Commits before the next tidy-up when the last one asked for another soon.
_TIDY_AGAIN = 4


@attrs.define(eq=False)
class Operation(Generic[C]):
    """One queued call on the connection, and how it ended."""

    fn: Callable[[C], Any]
    durable: bool
    done: asyncio.Future[None]
    result: Any = None
    error: BaseException | None = None


class GroupCommit(Generic[C]):
    """Runs operations in batches through ``commit`` (on the loop: it runs each operation's
    ``fn``, setting its ``result`` or ``error``, and commits without waiting for the disk),
    then, for a batch with durable operations, ``sync(durable=True, tidy=False)``, which
    makes every commit so far durable or raises (its result: True to be called with
    ``tidy`` again soon, after ``_TIDY_AGAIN`` commits, as when a reader kept it from
    finishing).

    Every ``tidy_every`` commits, ``sync(..., tidy=True)`` (SQLite checkpoints its WAL there)
    runs with no commit beside it: operations asked for meanwhile wait for it. A checkpoint
    that ran beside commits could never catch up with a busy batch, and the WAL would grow
    for as long as the batch runs.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[Operation[C]]], None],
        sync: Callable[[bool, bool], bool],
        *,
        tidy_every: int = 100,
    ) -> None:
        self._commit = commit
        self._sync = sync
        self._tidy_every = tidy_every
        self._queue: list[Operation[C]] = []
        self._flushing = False  # a flush is scheduled
        self._unsynced: list[Operation[C]] = []  # committed, waiting for the next fsync
        self._syncing = False  # a sync is on its way in a thread
        self._tidying = False  # ... and it tidies: no commit until it is done
        self._since_tidy = 0
        self._slow_syncs = 0
        self._idle: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Transactions committed, and fsyncs that made some durable.
        self.commits = 0
        self.durable_commits = 0

    async def run(self, fn: Callable[[C], T], *, durable: bool) -> T:
        """``fn(connection)`` in the next transaction; its result once that committed."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise EventLoopError("the ledger runs on asyncio only") from None
        if loop is not self._loop:
            self._adopt(loop)
        op: Operation[C] = Operation(fn, durable, loop.create_future())
        self._queue.append(op)
        if not (self._flushing or self._tidying):
            self._flushing = True
            loop.call_soon(self._flush, loop)
        # Shielded: an operation that was asked for lands, and its caller learns how, even
        # after Ctrl-C, or the ledger and the batch would tell different stories.
        with anyio.CancelScope(shield=True):
            await op.done
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Used from a new loop (``anyio.run`` twice): whatever the last one left scheduled
        (it ended with a write or an fsync on its way) will never run there. Its writes
        still go into this loop's next commit (asked for, they land); nobody waits for them."""
        if self._loop is not None and not self._loop.is_closed() and self._loop.is_running():
            raise EventLoopError("the ledger is in use on another event loop")
        self._loop = loop
        self._flushing = self._syncing = self._tidying = False

    async def aclose(self) -> None:
        """Wait for every operation asked for, and for the fsync on its way."""
        with anyio.CancelScope(shield=True):
            while self._queue or self._syncing:
                waiter = asyncio.get_running_loop().create_future()
                self._idle.append(waiter)
                await waiter

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flushing = False
        batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        except BaseException as exc:  # the commit itself broke: every op fails with it
            for op in batch:
                op.error = op.error or exc
        self.commits += 1
        self._since_tidy += 1
        waiting = [op for op in batch if op.durable and op.error is None]
        _resolve(op for op in batch if not (op.durable and op.error is None))
        self._unsynced += waiting
        if not self._syncing and (self._unsynced or self._since_tidy >= self._tidy_every):
            self._start_sync(loop)
        self._maybe_idle()

    def _start_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        ops, self._unsynced = self._unsynced, []
        tidy = self._since_tidy >= self._tidy_every
        if tidy:
            self._since_tidy = 0
        future = None
        if self._slow_syncs >= _SLOW_SYNCS:
            try:
                future = loop.run_in_executor(None, self._sync, bool(ops), tidy)
            except RuntimeError:  # the loop's executor is shut down: on the loop, then
                future = None
        if future is None:
            started = time.perf_counter()
            try:
                again = self._sync(bool(ops), tidy)
            except Exception as exc:
                self._synced(loop, ops, exc)
            else:
                self._tidy_soon(tidy and again)
                self._synced(loop, ops, None)
            if time.perf_counter() - started > _SLOW_SYNC:
                self._slow_syncs += 1
            return
        self._syncing, self._tidying = True, tidy
        future.add_done_callback(lambda done: self._thread_synced(loop, ops, tidy, done))

    def _thread_synced(
        self,
        loop: asyncio.AbstractEventLoop,
        ops: Sequence[Operation[C]],
        tidy: bool,
        done: asyncio.Future[bool],
    ) -> None:
        error = _error_of(done)
        self._tidy_soon(tidy and error is None and done.result())
        self._synced(loop, ops, error)

    def _tidy_soon(self, again: bool) -> None:
        if again:
            self._since_tidy = max(self._since_tidy, self._tidy_every - _TIDY_AGAIN)

    def _synced(
        self,
        loop: asyncio.AbstractEventLoop,
        ops: Sequence[Operation[C]],
        error: BaseException | None,
    ) -> None:
        self._syncing = self._tidying = False
        if error is not None:  # not known to be on the disk: each of these fails
            for op in ops:
                op.error = error
        elif ops:
            self.durable_commits += 1
        _resolve(ops)
        if self._queue and not self._flushing:  # what waited for a tidy-up
            self._flushing = True
            loop.call_soon(self._flush, loop)
        if self._unsynced or self._since_tidy >= self._tidy_every:
            self._start_sync(loop)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not (self._queue or self._syncing):
            waiters, self._idle = self._idle, []
            _resolve_all(waiters)


def _error_of(done: asyncio.Future[Any]) -> BaseException | None:
    return asyncio.CancelledError() if done.cancelled() else done.exception()


def _resolve(ops: Any) -> None:
    for op in ops:
        if not op.done.done():  # not cancelled by plain asyncio from outside the shield
            try:
                op.done.set_result(None)
            except RuntimeError:  # asked for on a loop since closed: landed, nobody waits
                pass


def _resolve_all(futures: Sequence[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            try:
                future.set_result(None)
            except RuntimeError:  # its loop is closed
                pass
