"""Many edits at once: bounded, streamed to disk, one failure never stopping the rest.

The shape is anyio's ``as_completed``: :func:`edit_many` is an async context manager that
owns the task group and yields a :class:`Batch`, which is iterated for results as items
finish. Leaving the ``async with`` block early cancels what is still running, on fal too.

Each item flows through: validate, upload local files (bounded by ``uploads``), submit and
wait (bounded by the adaptive jobs limit), download (bounded by ``downloads``). The next item
is pulled from the caller's iterable only when a pipeline slot frees up, so a batch of
millions holds only about ``jobs + uploads + downloads`` items in memory.

Modules: ``_items`` (what a batch is made of and how each item ends), ``_events`` (progress
events), ``_adaptive`` (the AIMD jobs limit), ``_ledger`` (the durable record, in SQLite or
shared in PostgreSQL), ``_runner`` (one item's way through the pipeline).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core import Core
from .._exceptions import InputError, JournalLockedError
from .._files import check_writable, image_names_in, remove_stale_parts
from .._reconcile_models import ReconcileReport
from .._slots import Slots
from .._uploads import Uploader
from ._adaptive import AdaptiveLimiter
from ._items import BatchItem, BatchSettings, BatchSummary, ItemResult, ItemState
from ._ledger import JournalBackend, open_journal
from ._reconcile_pass import reconcile_journal
from ._runner import Budget, Runner

__all__ = ["Batch", "edit_many", "writing"]

#: The journals (by ``id``) a batch of this process is writing now. The file lock keeps out
#: every other journal object, but not a second batch given the same one: the two would
#: read the same empty rows and both pay for every item.
_WRITING: set[int] = set()


def writing(journal: JournalBackend) -> bool:
    """True while a batch of this process writes this very journal object."""
    return id(journal) in _WRITING


class Batch:
    """A running batch: iterate it for :class:`ItemResult` as items finish, inside its
    ``async with`` block (after the block, iterating it is a ``RuntimeError``).

    Usage::

        async with client.edit_many(inputs, download_to="out/") as batch:
            async for result in batch:
                print(result.key, result.state)
        print(batch.summary())
    """

    def __init__(self, receive: MemoryObjectReceiveStream[ItemResult], runner: Runner):
        self._receive = receive
        self._ended = False
        self._runner = runner
        self._jobs = runner.jobs
        self._started = time.monotonic()
        self._finished: float | None = None
        self._counts: Counter[ItemState] = Counter()
        self._bytes = 0
        self._cost = Decimal(0)
        self._job_retries = 0
        # The client may serve other calls too: the summary counts only this batch's retries.
        self._retries_at_start = runner.core.stats.snapshot().retries
        #: What reconciling the journal's unknown rows did before anything was submitted.
        self.reconciled = ReconcileReport()
        self._undelivered: list[ItemResult] = []

    def __aiter__(self) -> AsyncIterator[ItemResult]:
        if self._ended:
            raise RuntimeError(
                "this batch ended with its `async with client.edit_many(...)` block; "
                "iterate it inside the block"
            )
        return self._results()

    def _end(self) -> None:
        if not self._ended:  # results still buffered when the consumer stopped iterating
            while True:
                try:
                    self._undelivered.append(self._receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
        self._ended = True
        self._receive.close()

    @property
    def undelivered(self) -> list[ItemResult]:
        """Results that ended but were never yielded, because iteration stopped first (a
        ``break``, an exception, a cancelled task, a deadline): read it after the block.

        Such an item is finished all the same (its files are on disk, its journal row
        says so); this is how a caller that stopped early still learns of it. Items cut
        short on the way out are not here: they have no result (see
        :attr:`BatchSummary.interrupted`).
        """
        return list(self._undelivered)

    async def _results(self) -> AsyncIterator[ItemResult]:
        receive = self._receive
        while True:
            # Results already waiting are handed over at once: a trip through the event loop
            # for each (receive's checkpoint) made the last of a burst of 256 wait 256 of
            # them. An empty buffer waits, and checkpoints.
            # A cancelled consumer stops here (this yields only when it is cancelled), never
            # handed the results of senders parked on a full buffer first.
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                try:
                    result = receive.receive_nowait()
                except anyio.WouldBlock:
                    result = await receive.receive()
            except anyio.EndOfStream:
                break
            yield result
        self._finished = time.monotonic()

    def _record(self, result: ItemResult) -> None:
        self._counts[result.state] += 1
        self._bytes += sum(f.size for f in result.files)
        self._cost += result.cost
        self._job_retries += max(0, result.attempts - 1)

    @property
    def concurrency(self) -> int:
        """The jobs-in-flight level now (lowered on 429, raised back on success)."""
        return self._jobs.level

    def summary(self) -> BatchSummary:
        """Counts so far (final once iteration ended)."""
        end = self._finished or time.monotonic()
        retries = self._runner.core.stats.snapshot().retries.since(self._retries_at_start)
        # Items cut short on the way out yield no result, but they are part of the batch.
        runner = self._runner
        return BatchSummary(
            total=sum(self._counts.values()) + runner.interrupted,
            completed=self._counts[ItemState.COMPLETED],
            failed=self._counts[ItemState.FAILED],
            cancelled=self._counts[ItemState.CANCELLED] + runner.cancels_accepted,
            cancelled_on_exit=runner.cancels_accepted,
            not_submitted=self._counts[ItemState.NOT_SUBMITTED],
            unknown=self._counts[ItemState.UNKNOWN],
            interrupted=runner.interrupted,
            bytes_downloaded=self._bytes,
            estimated_cost=self._cost,
            job_retries=self._job_retries,
            request_retries=retries.as_dict(),
            concurrency=self._jobs.level,
            lowest_concurrency=self._jobs.lowest,
            elapsed=end - self._started,
            journal_error=runner.journal_damage,
        )


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


@asynccontextmanager
async def edit_many(
    core: Core,
    uploader: Uploader,
    items: Iterable[BatchItem] | AsyncIterable[BatchItem],
    settings: BatchSettings,
) -> AsyncIterator[Batch]:
    """Run many edits; see :meth:`AsyncClient.edit_many`."""
    limits = core.config.limits
    jobs = AdaptiveLimiter(settings.concurrency, adaptive=settings.adaptive)
    runner = Runner(
        core=core,
        uploader=uploader,
        jobs=jobs,
        downloads=Slots(settings.downloads),
        download_to=settings.download_to,
        job_retries=settings.job_retries,
        on_event=settings.on_event,
        budget=Budget(settings.budget),
        journal=None,
        submit_options=settings.submit_options,
        resubmit_unknown=settings.resubmit_unknown,
        retry_failed=settings.retry_failed,
        overwrite=settings.overwrite,
        names=settings.names,
        max_in_flight=settings.max_in_flight,
        policy=settings.reconcile,
    )
    pipeline = jobs.limit + limits.uploads + settings.downloads
    async with AsyncExitStack() as stack:
        journal = settings.journal
        if isinstance(journal, JournalBackend):
            if writing(journal):
                raise JournalLockedError(journal.where, "another batch of this process")
            _WRITING.add(id(journal))
            stack.callback(_WRITING.discard, id(journal))
            runner.journal = journal  # the caller's: they close it
        elif journal is not None:
            runner.journal = open_journal(journal)
            stack.push_async_callback(runner.journal.aclose)
        if runner.journal is not None:
            # A client closed under the batch cancels its jobs in hooks that then write what
            # fal answered: the journal stays open for them (before it closes, LIFO).
            stack.push_async_callback(core.hooks_ran)
        reconciled = ReconcileReport()
        if runner.journal is not None:
            await runner.journal.open()
            stack.push_async_callback(runner.save_unsaved)  # before the journal closes
            # Lost submits first: a job found is followed, not paid for again.
            reconciled = await reconcile_journal(core, runner.journal, settings.reconcile)
            if settings.submit_options.get("webhook_url") is not None:
                ledger = runner.journal
                runner.tag = (await ledger.batch_id(), await ledger.webhook_secret())
            await runner.preload()  # what earlier runs spent counts against the budget first
        if runner.download_to is not None:
            runner.foreign = await anyio.to_thread.run_sync(_prepare_folder, runner.download_to)
        # Made here, closed by the stack: a journal that fails to open leaves no stream
        # behind (an unclosed one warns when collected). _feed closes ``send`` itself too.
        send, receive = anyio.create_memory_object_stream[ItemResult](jobs.limit)
        stack.callback(send.close)
        batch = Batch(receive, runner)
        batch.reconciled = reconciled
        stack.callback(batch._end)
        async with anyio.create_task_group() as tg:
            if runner.journal is not None:
                tg.start_soon(runner.journal.keep_leases)
            tg.start_soon(_feed, runner, batch, items, send, pipeline)
            try:
                yield batch
            finally:
                tg.cancel_scope.cancel()
                batch._end()


def _prepare_folder(folder: Path) -> frozenset[str]:
    """Before anything is paid: prove the folder writable, clear dead runs' temp files, and
    list the output names already there (blocking: runs in a thread)."""
    try:
        check_writable(folder)
    except OSError as exc:
        raise InputError(
            "download_to", str(folder), f"a folder this process can write ({exc})"
        ) from exc
    remove_stale_parts(folder)
    return image_names_in(folder)


async def _feed(
    runner: Runner,
    batch: Batch,
    items: Iterable[Any] | AsyncIterable[Any],
    send: MemoryObjectSendStream[ItemResult],
    pipeline: int,
) -> None:
    slots = Slots(pipeline)

    async def deliver(result: ItemResult) -> None:
        batch._record(result)
        try:
            # The batch being left cancels this task, but a task whose wait had just ended
            # runs one more step uncancelled: it stops here, not at a stream closed meanwhile.
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                send.send_nowait(result)  # room in the buffer: no trip through the event loop
            except anyio.WouldBlock:
                # Shielded: a parked result is taken by the consumer or, as the batch is
                # left, by Batch._end; a cancelled wait could not tell which had happened.
                with anyio.CancelScope(shield=True):
                    await send.send(result)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            batch._undelivered.append(result)  # nobody iterates any more: the batch was left
        except anyio.get_cancelled_exc_class():
            batch._undelivered.append(result)  # cancelled before it was sent: never yielded
            raise

    async def one(index: int, item: Any) -> None:
        try:
            result = await runner.run(index, item)
            if result is not None:  # None: another worker holds it; the sweep retries it
                # Deliver before freeing the slot: the consumer gets it before new items compete.
                await deliver(result)
        finally:
            slots.release()
            runner.active -= 1
            runner.changed.set()

    async with send, anyio.create_task_group() as tg:
        fed = anyio.Event()
        if runner.shared:
            tg.start_soon(runner.sweep, deliver, fed)
        index = 0
        async for item in _aiter(items):
            await slots.acquire()
            # Counted before the task starts: a free slot is taken without yielding, so the
            # feed may end before any item ran, and the sweep must not take that for the end.
            runner.active += 1
            tg.start_soon(one, index, item)
            index += 1
        fed.set()
