"""Client: the synchronous façade, for scripts, threads and notebooks.

It is the async client run on an event loop of its own, in a background thread (anyio's
blocking portal): every method hands a coroutine to that loop and blocks until it ends. So it
works where no loop runs (a script), from many threads at once, and where one already runs in
the calling thread (a notebook cell), which ``asyncio.run()`` refuses.

A blocked call that is interrupted (Ctrl-C, a notebook's interrupt: ``KeyboardInterrupt``)
cancels its task on the loop and waits, bounded, for that task to end: a job being waited on
is cancelled on fal first, as when an async caller is cancelled, so it is not paid for.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, wait
from contextlib import ExitStack
from decimal import Decimal
from functools import partial
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

from anyio import CancelScope
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._batch import Batch
from ._batch._items import BatchItem, BatchSummary, EventCallback, ItemResult
from ._batch._ledger import JournalBackend
from ._client import AsyncClient
from ._config import ClientConfig, Limits, Polling, RetryPolicy, Timeouts
from ._endpoint import DEFAULT_ENDPOINT, EndpointId
from ._exceptions import MissingCredentialsError
from ._job import JobHandle, UpdateCallback
from ._models import (
    CancelOutcome,
    Completed,
    DownloadedFile,
    EditImageInput,
    EditImageOutput,
    ImageFile,
    JobStatus,
    JobUrls,
    LogEntry,
    SubmitOptions,
    SubmitReceipt,
)
from ._name_template import DEFAULT_NAME_TEMPLATE
from ._reconcile_models import ReconcilePolicy, ReconcileReport
from ._statistics import ClientStatistics
from ._transport import Transport

__all__ = ["Client", "SyncBatch", "SyncJobHandle"]

T = TypeVar("T")
_END = object()
#: Seconds an interrupted call waits, past ``Timeouts.cancel``, for its task to wind down.
_WIND_DOWN = 5.0


class _Loop:
    """The background event loop: runs coroutines for the calling thread, interruptibly."""

    def __init__(self, portal: BlockingPortal, cancel_timeout: float) -> None:
        self.portal = portal
        self.wind_down = cancel_timeout + _WIND_DOWN
        self.thread_id: int = portal.call(threading.get_ident)

    def in_loop_thread(self) -> bool:
        """True on the loop's own thread (a callback the client runs)."""
        return threading.get_ident() == self.thread_id

    def run(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        abandon: Callable[[T], Awaitable[object]] | None = None,
    ) -> T:
        """Run ``fn(*args)`` on the loop and return its result; see :meth:`_Task.run`."""
        return _Task(self, fn, args, abandon=abandon).run()


class _Task(Generic[T]):
    """One coroutine on the loop, awaited from this thread, and cancelled from it.

    An interrupt can land anywhere, even while the task is being spawned, so cancelling does
    not rely on the spawn having returned: a flag, under a lock, stops a task that has not
    begun (it then never calls ``fn``), and cancels the scope of one that has. ``done`` is
    set when a begun task has ended: an interrupted caller waits for it, so the job's cancel
    has been sent before the interrupt propagates.
    """

    def __init__(
        self,
        loop: _Loop,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        *,
        abandon: Callable[[T], Awaitable[object]] | None = None,
    ):
        self._loop = loop
        self._fn = fn
        self._args = args
        self._abandon = abandon
        self._lock = threading.Lock()
        self._cancelled = False
        self._scope: CancelScope | None = None
        self._done = threading.Event()
        self._future: Future[T | None] | None = None

    async def _body(self) -> T | None:
        with self._lock:
            if self._cancelled:
                return None  # cancelled before it began: nothing was started
            self._scope = scope = CancelScope()
        try:
            with scope:
                return await self._fn(*self._args)
            return None  # cancelled: the caller has stopped waiting
        finally:
            self._done.set()

    def start(self) -> None:
        """Spawn the task on the loop (call inside a ``try`` that calls :meth:`cancel`)."""
        self._future = self._loop.portal.start_task_soon(self._body)

    def run(self) -> T:
        """Start the task and block until it ends; its result, or its exception raised here.

        Interrupted (``KeyboardInterrupt``, ``SystemExit``), it cancels the task and waits
        until it has ended (bounded by ``Timeouts.cancel`` and a few seconds; a second Ctrl-C
        stops waiting), then lets the interrupt go on.
        """
        try:
            self.start()
            return self.result()
        except BaseException:
            self.cancel()
            self._abandoned()
            raise

    def _abandoned(self) -> None:
        # The interrupt may reach the loop after fn's last checkpoint: fn then returned its
        # result (a submitted job's handle) to a caller no longer there. ``abandon`` undoes
        # it (cancels that job), so Ctrl-C leaves nothing running wherever it lands.
        future = self._future
        if self._abandon is None or future is None or not self._done.is_set():
            return
        wait([future], timeout=self._loop.wind_down)
        if not future.done() or future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if result is None:
            return  # cancelled before or while fn ran: fn's own cleanup has run
        with contextlib.suppress(RuntimeError):  # the portal has stopped
            self._loop.portal.call(self._abandon, result)

    def result(self) -> T:
        """Block until the started task ends: its result, or its exception."""
        if self._future is None:
            raise RuntimeError("the task was not started")
        return self._future.result()  # type: ignore[return-value]  # None only if cancelled

    def cancel(self, *, wait: bool = True) -> None:
        """Cancel the task, begun or not; with ``wait``, wait until a begun one has ended
        (never from the loop's own thread, which would wait on itself)."""
        with self._lock:
            self._cancelled = True
            scope = self._scope
        if scope is None or self._done.is_set():
            return
        if threading.get_ident() == self._loop.thread_id:
            scope.cancel()
            return
        try:
            if not wait:
                self._loop.portal.start_task_soon(scope.cancel)
                return
            self._loop.portal.call(scope.cancel)
        except RuntimeError:  # the portal has stopped: the task has ended with it
            return
        self._done.wait(self._loop.wind_down)


class _Feed(Generic[T]):
    """An async iteration run on the loop, its items handed to this thread one by one.

    It starts with :meth:`start` (or the first ``next``); leaving early (a ``break`` with
    :meth:`close`, an error, Ctrl-C) cancels the producer and waits for it to end.
    """

    # Class defaults too: ``__del__`` may run on an instance whose ``__init__`` did not end.
    _started = False
    _ended = False

    def __init__(self, loop: _Loop, produce: Callable[[Callable[[T], None]], Awaitable[None]]):
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._task: _Task[None] = _Task(loop, self._pump, (produce,))
        self._started = False
        self._ended = False

    async def _pump(self, produce: Callable[[Callable[[T], None]], Awaitable[None]]) -> None:
        try:
            await produce(self._queue.put)
        finally:
            self._queue.put(_END)

    def start(self) -> None:
        """Start the producer, once."""
        if self._started:
            return
        self._started = True
        try:
            self._task.start()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        self.start()
        try:
            item = self._queue.get()
            if item is _END:
                self._ended = True
                self._task.result()  # the producer's error, if it raised
                raise StopIteration
        except BaseException:
            self.close()
            raise
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the producer (the async iteration is left, as by a ``break``); idempotent."""
        self._ended = True
        self._task.cancel()

    def leftover(self) -> list[T]:
        """The items produced but never taken by ``next`` (call it after :meth:`close`)."""
        items: list[T] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not _END:
                items.append(item)

    def __del__(self) -> None:
        # A feed dropped mid-way (a ``break`` without close) stops its producer, unwaited.
        if self._started and not self._ended:
            self._task.cancel(wait=False)


class Client:
    """A synchronous client for fal's queue API: :class:`AsyncClient` behind blocking calls.

    It takes the same keyword arguments as :class:`AsyncClient` and has the same verbs
    (``edit``, ``submit``, ``handle``, ``status``, ``result``, ``cancel``, ``download``,
    ``edit_many``), which block until done. It runs its own event loop in a background
    thread, so it works in a script, from several threads at once, and in a notebook cell,
    where a loop already runs. Close it, or use it in a ``with`` block: that closes the
    connections and stops the thread (jobs still waited on are cancelled on fal first).

    Ctrl-C during a call that waits for a job (``edit``, ``wait``, ``result``) cancels the job
    on fal, then raises ``KeyboardInterrupt``. Callbacks (``on_update``, ``on_event``) run
    on the client's thread, so they must not call the client themselves.

    Usage::

        with Client() as fal:  # reads FAL_KEY
            out = fal.edit({"prompt": "Make it pixel art", "image_urls": [url]})
            fal.download(out, "out")

    Raises:
        MissingCredentialsError: no key (no ``FAL_KEY``, no ``api_key=``), before a thread
            starts or anything is sent.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        queue_url: str | None = None,
        rest_url: str | None = None,
        api_url: str | None = None,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        polling: Polling | None = None,
        config: ClientConfig | None = None,
        transport: Transport | None = None,
    ) -> None:
        # Settings first, in this thread: a bad one (or no key) raises before a thread starts.
        if config is None:
            config = ClientConfig.from_env(
                api_key=api_key,
                queue_url=queue_url,
                rest_url=rest_url,
                api_url=api_url,
                timeouts=timeouts,
                limits=limits,
                retry=retry,
                polling=polling,
            )
        if config.credentials is None:
            raise MissingCredentialsError
        self._lock = threading.Lock()
        self._closed = False
        self._stack = ExitStack()
        portal = self._stack.enter_context(start_blocking_portal("asyncio", name="fal_edit_async"))
        try:
            # Built on the loop it runs on, which its connections belong to.
            self._async: AsyncClient = portal.call(
                partial(AsyncClient, config=config, transport=transport)
            )
        except BaseException:
            self._stack.close()
            raise
        self._loop = _Loop(portal, config.timeouts.cancel)

    def __repr__(self) -> str:
        return f"Client(queue_url={self._async.config.queue_url!r})"

    @property
    def config(self) -> ClientConfig:
        """The configuration this client was built with (read-only)."""
        return self._async.config

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the client's thread; a second call does nothing.

        Jobs other threads still wait on are cancelled on fal first (see
        :meth:`AsyncClient.aclose`); those calls then raise ``RuntimeError``.
        """
        if self._loop.in_loop_thread():
            # A callback (on_event, on_update) runs on the client's own thread: closing from
            # there could not wait for its own loop, and would leave the client half closed.
            raise RuntimeError(
                "close() was called from a callback the client runs; close it from the "
                "thread that made it (stop the batch by raising from the callback instead)"
            )
        with self._lock:
            if self._closed:
                return
            self._closed = True
        portal = self._loop.portal
        try:
            portal.call(self._async.aclose)
            # Whatever still runs (a feed nobody reads) is cancelled, not waited for.
            portal.call(portal.stop, True)
        finally:
            self._stack.close()

    def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        self._check_open()
        return self._loop.run(fn, *args)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this client is closed; create a new one")

    def statistics(self) -> ClientStatistics:
        """A snapshot of the counters: requests, submits, streams, polls, retries by kind."""
        return self._async.statistics()

    def edit(
        self,
        input: EditImageInput | Mapping[str, Any],
        *,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        **options: Unpack[SubmitOptions],
    ) -> EditImageOutput:
        """Submit one edit, wait for it, and return its output (see :meth:`AsyncClient.edit`).

        ``input`` is an :class:`EditImageInput` or the model's JSON mapping. When ``timeout``
        passes or the call is interrupted (Ctrl-C), the job is cancelled on fal first.
        """
        return self._run(
            partial(self._async.edit, input, timeout=timeout, on_update=on_update, **options)
        )

    def submit(
        self, input: EditImageInput | Mapping[str, Any], **options: Unpack[SubmitOptions]
    ) -> SyncJobHandle:
        """Enqueue one edit job and return its handle (see :meth:`AsyncClient.submit`)."""
        self._check_open()
        handle = self._loop.run(
            partial(self._async.submit, input, **options), abandon=JobHandle.cancel_quietly
        )
        return SyncJobHandle(self, handle)

    def handle(self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT) -> SyncJobHandle:
        """Re-attach to a job by its request id."""
        self._check_open()
        return SyncJobHandle(self, self._async.handle(request_id, endpoint=endpoint))

    def status(
        self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT, logs: bool = False
    ) -> JobStatus:
        """Poll one job's status by request id."""
        return self._run(partial(self._async.status, request_id, endpoint=endpoint, logs=logs))

    def result(
        self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT, timeout: float | None = None
    ) -> EditImageOutput:
        """Wait for a job by request id and return its output (Ctrl-C cancels it on fal)."""
        return self._run(
            partial(self._async.result, request_id, endpoint=endpoint, timeout=timeout)
        )

    def cancel(self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT) -> CancelOutcome:
        """Ask fal to cancel a job; returns requested, already completed or not found."""
        return self._run(partial(self._async.cancel, request_id, endpoint=endpoint))

    def reconcile(
        self,
        journal: str | os.PathLike[str] | JournalBackend,
        *,
        policy: ReconcilePolicy | None = None,
    ) -> ReconcileReport:
        """Settle a journal's lost submits from evidence; see :meth:`AsyncClient.reconcile`."""
        return self._run(partial(self._async.reconcile, journal, policy=policy))

    def download(
        self,
        images: EditImageOutput | Sequence[ImageFile],
        dest: str | os.PathLike[str],
        *,
        stem: str = "image",
        max_bytes: int | None = None,
        fsync: bool = False,
    ) -> list[DownloadedFile]:
        """Download output images into ``dest``, atomically (see :meth:`AsyncClient.download`)."""
        return self._run(
            partial(self._async.download, images, dest, stem=stem, max_bytes=max_bytes, fsync=fsync)
        )

    def edit_many(
        self,
        items: Iterable[BatchItem],
        *,
        concurrency: int | None = None,
        download_to: str | os.PathLike[str] | None = None,
        downloads: int | None = None,
        job_retries: int = 1,
        budget: float | Decimal | None = None,
        journal: str | os.PathLike[str] | JournalBackend | None = None,
        max_in_flight: int | None = None,
        adaptive: bool = True,
        on_event: EventCallback | None = None,
        resubmit_unknown: bool = False,
        retry_failed: bool = False,
        overwrite: bool = False,
        name_template: str = DEFAULT_NAME_TEMPLATE,
        reconcile: ReconcilePolicy | None = None,
        **options: Unpack[SubmitOptions],
    ) -> SyncBatch:
        """Edit many images in parallel; iterate the result for each item as it finishes.

        The arguments are those of :meth:`AsyncClient.edit_many`, and are checked at the
        call. The batch starts when iterated (or entered); leaving the loop early, an error
        or Ctrl-C cancels the items still running, on fal too.

        Usage::

            batch = fal.edit_many(inputs, download_to="out")
            for result in batch:
                print(result.key, result.state, result.error or "")
            print(batch.summary())
        """
        self._check_open()
        manager = self._loop.portal.call(
            partial(
                self._async.edit_many,
                items,
                concurrency=concurrency,
                download_to=download_to,
                downloads=downloads,
                job_retries=job_retries,
                budget=budget,
                journal=journal,
                max_in_flight=max_in_flight,
                adaptive=adaptive,
                on_event=on_event,
                resubmit_unknown=resubmit_unknown,
                retry_failed=retry_failed,
                overwrite=overwrite,
                name_template=name_template,
                reconcile=reconcile,
                **options,
            )
        )

        async def produce(put: Callable[[ItemResult], None]) -> None:
            async with manager as batch:
                sync_batch._batch = batch
                async for result in batch:
                    put(result)

        sync_batch = SyncBatch(self._loop, produce)
        return sync_batch


class SyncBatch:
    """A batch run by :meth:`Client.edit_many`: iterate it for each :class:`ItemResult` as
    items finish. It starts when first iterated (or entered with ``with``); leaving early
    (``break`` inside its ``with`` block, an error, Ctrl-C) or :meth:`close` cancels the
    items still running, on fal too.
    """

    def __init__(
        self, loop: _Loop, produce: Callable[[Callable[[ItemResult], None]], Awaitable[None]]
    ) -> None:
        self._feed = _Feed(loop, produce)
        self._batch: Batch | None = None
        self._left: list[ItemResult] = []

    def __iter__(self) -> Iterator[ItemResult]:
        return self

    def __next__(self) -> ItemResult:
        return next(self._feed)

    def __enter__(self) -> Self:
        self._feed.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the batch: items still running are cancelled (on fal too); idempotent."""
        self._feed.close()
        self._left += self._feed.leftover()  # the producer has ended: these are all

    def summary(self) -> BatchSummary:
        """Counts so far (final once iteration ended)."""
        if self._batch is None:
            raise RuntimeError("this batch has not started: iterate it first")
        return self._batch.summary()

    @property
    def undelivered(self) -> list[ItemResult]:
        """Results that ended but were never yielded, because iteration stopped first (see
        :attr:`Batch.undelivered`); read it once the batch is closed."""
        return [*self._left, *(self._batch.undelivered if self._batch is not None else ())]


class SyncJobHandle:
    """One submitted job, for :class:`Client`: wait for it, fetch its result, follow its
    logs or cancel it (see :class:`JobHandle`, whose blocking twin it is)."""

    def __init__(self, client: Client, handle: JobHandle) -> None:
        self._client = client
        self._handle = handle

    def __repr__(self) -> str:
        return f"SyncJobHandle(request_id={self.request_id!r})"

    @property
    def request_id(self) -> str:
        """fal's id of the job."""
        return self._handle.request_id

    @property
    def endpoint(self) -> EndpointId:
        """The endpoint the job runs on."""
        return self._handle.endpoint

    @property
    def urls(self) -> JobUrls:
        """Where the job's status, stream, result and cancel live."""
        return self._handle.urls

    @property
    def receipt(self) -> SubmitReceipt | None:
        """fal's answer to the submit (None for a re-attached handle)."""
        return self._handle.receipt

    def status(self, *, logs: bool = False) -> JobStatus:
        """Poll the job's status once."""
        return self._client._run(partial(self._handle.status, logs=logs))

    def wait(
        self,
        *,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        logs: bool = True,
    ) -> Completed:
        """Block until the job completes; its final status with every log line (none, and
        none asked of fal, with ``logs=False``).

        When ``timeout`` passes or the wait is interrupted (Ctrl-C), the job is cancelled on
        fal before :class:`JobTimeoutError` or ``KeyboardInterrupt`` is raised.
        """
        wait = partial(self._handle.wait, timeout=timeout, on_update=on_update, logs=logs)
        return self._client._run(wait)

    def result(
        self, *, timeout: float | None = None, on_update: UpdateCallback | None = None
    ) -> EditImageOutput:
        """Wait for the job and return its output (Ctrl-C cancels the job on fal)."""
        return self._client._run(partial(self._handle.result, timeout=timeout, on_update=on_update))

    def cancel(self) -> CancelOutcome:
        """Ask fal to cancel the job; returns what fal answered."""
        return self._client._run(self._handle.cancel)

    def updates(self, *, logs: bool = True) -> Iterator[JobStatus]:
        """Yield Queued / InProgress / Completed updates until the job completes (see
        :meth:`JobHandle.updates`); leaving early stops following, the job goes on."""
        self._client._check_open()

        async def produce(put: Callable[[JobStatus], None]) -> None:
            async for update in self._handle.updates(logs=logs):
                put(update)

        return _Feed(self._client._loop, produce)

    def logs(self) -> Iterator[LogEntry]:
        """Yield each log line once, as it arrives, until the job completes."""
        self._client._check_open()

        async def produce(put: Callable[[LogEntry], None]) -> None:
            async for entry in self._handle.logs():
                put(entry)

        return _Feed(self._client._loop, produce)
