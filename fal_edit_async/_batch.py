"""Many edits at once: bounded, streamed to disk, one failure never stopping the rest.

The shape is anyio's ``as_completed``: :func:`edit_many` is an async context manager that
owns the task group and yields a :class:`Batch`, which is iterated for results as items
finish. Leaving the ``async with`` block early cancels what is still running, on fal too.

Each item flows through: validate, upload local files (bounded by ``uploads``), submit and
wait (bounded by the adaptive jobs limit), download (bounded by ``downloads``). The next item
is pulled from the caller's iterable only when a pipeline slot frees up, so a batch of
millions holds only about ``jobs + uploads + downloads`` items in memory.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._adaptive import AdaptiveLimiter
from ._batch_items import (
    BatchItem,
    BatchSummary,
    EventCallback,
    ItemResult,
    ItemState,
    describe_input,
    fingerprint,
    split_item,
)
from ._converter import input_from_dict, parse
from ._downloads import DownloadedFile, download_all, remove_stale_parts, safe_stem
from ._endpoint import DEFAULT_ENDPOINT, EndpointId
from ._events import (
    BatchEvent,
    ItemCompleted,
    ItemDownloaded,
    ItemFailed,
    ItemLog,
    ItemQueued,
    ItemStarted,
    ItemSubmitted,
)
from ._exceptions import (
    BudgetExceededError,
    DownloadError,
    FalEditError,
    InputError,
    JobCancelledError,
    JobFailedError,
    ProtocolError,
)
from ._job import JobHandle, call_back
from ._journal import Journal, JournalEntry, JournalState
from ._models import Completed, EditImageInput, EditImageOutput, InProgress, JobStatus, Queued
from ._pricing import estimate_cost

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = ["Batch", "check_image_count", "edit_many"]

#: fal request-error types worth a second job: the runner failed, not the request.
RETRYABLE_ERROR_TYPES = frozenset(
    {
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
    }
)


#: The client's counters that count retried requests, by kind.
_RETRY_KINDS = (
    "rate_limit",
    "server_error",
    "transport",
    "timeout",
    "download_retry",
    "upload_retry",
)


def _stem_of(input: EditImageInput | None, key: str, keyed: bool) -> str:
    if keyed or input is None:
        return safe_stem(key)
    first = input.image_urls[0]
    if isinstance(first, PurePath | os.PathLike):
        return safe_stem(Path(first).stem)
    if isinstance(first, str) and not first.startswith("data:"):
        name = PurePath(urlsplit(first).path).stem
        if name:
            return safe_stem(name)
    return "image"  # a data URI or bytes: claim_stem makes it unique


class Batch:
    """A running batch: iterate it for :class:`ItemResult` as items finish.

    Usage::

        async with client.edit_many(inputs, download_to="out/") as batch:
            async for result in batch:
                print(result.key, result.state)
        print(batch.summary())
    """

    def __init__(self, receive: MemoryObjectReceiveStream[ItemResult], runner: _Runner):
        self._receive = receive
        self._runner = runner
        self._jobs = runner.jobs
        self._started = time.monotonic()
        self._finished: float | None = None
        self._counts: Counter[ItemState] = Counter()
        self._bytes = 0
        self._cost = Decimal(0)
        self._job_retries = 0
        # The client may serve other calls too: the summary counts only this batch's retries.
        self._stats_at_start = Counter(runner.client.stats)

    def __aiter__(self) -> AsyncIterator[ItemResult]:
        return self._results()

    async def _results(self) -> AsyncIterator[ItemResult]:
        async for result in self._receive:
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
        stats = self._runner.client.stats - self._stats_at_start
        # Items cancelled on the way out yield no result, but they are part of the batch.
        cut_short = self._runner.cancelled_on_fal
        return BatchSummary(
            total=sum(self._counts.values()) + cut_short,
            completed=self._counts[ItemState.COMPLETED],
            failed=self._counts[ItemState.FAILED],
            cancelled=self._counts[ItemState.CANCELLED] + cut_short,
            cancelled_on_exit=cut_short,
            not_submitted=self._counts[ItemState.NOT_SUBMITTED],
            bytes_downloaded=self._bytes,
            estimated_cost=self._cost,
            job_retries=self._job_retries,
            request_retries={k: stats[k] for k in _RETRY_KINDS if stats[k]},
            concurrency=self._jobs.level,
            lowest_concurrency=self._jobs.lowest,
            elapsed=end - self._started,
        )


@attrs.define
class _Budget:
    limit: Decimal | None
    committed: Decimal = Decimal(0)

    def reserve(self, cost: Decimal) -> None:
        if self.limit is not None and self.committed + cost > self.limit:
            raise BudgetExceededError(
                estimate=float(cost), spent=float(self.committed), budget=float(self.limit)
            )
        self.committed += cost


@attrs.define
class _Item:
    """One valid item on its way through the pipeline."""

    index: int
    key: str
    journal_key: str
    stem: str
    input: EditImageInput
    description: Mapping[str, Any]
    cost: Decimal
    attempts: int = 0
    accepted: int = 0  # jobs fal accepted (and so may bill): what the cost counts
    request_id: str | None = None
    resumed: bool = False

    def result(self, state: ItemState, **values: Any) -> ItemResult:
        return ItemResult(
            key=self.key,
            index=self.index,
            state=state,
            input=self.input,
            request_id=self.request_id,
            attempts=self.attempts,
            cost=self.cost * self.accepted,
            resumed=self.resumed,
            **values,
        )


@attrs.define
class _Runner:
    client: AsyncClient
    jobs: AdaptiveLimiter
    downloads: anyio.CapacityLimiter
    download_to: Path | None
    job_retries: int
    on_event: EventCallback | None
    budget: _Budget
    journal: Journal | None
    submit_options: Mapping[str, Any]
    stems: set[str] = attrs.field(factory=set)
    stem_suffixes: dict[str, int] = attrs.field(factory=dict)
    cancelled_on_fal: int = 0

    async def emit(self, event: BatchEvent) -> None:
        if self.on_event is not None:
            await call_back(self.on_event, event)  # type: ignore[arg-type]

    def claim_stem(self, stem: str, key: str) -> str:
        """A stem no other item of this batch writes to, so no output overwrites another."""
        if self.download_to is None:
            return stem  # nothing is written: no need to keep thousands of names
        candidate = stem
        if candidate in self.stems:
            candidate = f"{stem}-{key[:8]}"
        # Remember where each stem's numbering got to: re-scanning from 1 made a batch of
        # identical inputs quadratic.
        n = self.stem_suffixes.get(candidate, 1)
        while (numbered := candidate if n == 1 else f"{candidate}-{n}") in self.stems:
            n += 1
        self.stem_suffixes[candidate] = n
        self.stems.add(numbered)
        return numbered

    async def run(self, index: int, item: Any) -> ItemResult:
        key, keyed, raw = split_item(item)
        try:
            input = raw if isinstance(raw, EditImageInput) else input_from_dict(raw)
        except InputError as exc:
            key = key or f"item-{index}"
            await self.emit(ItemFailed(key=key, request_id=None, error=exc))
            return ItemResult(key=key, index=index, state=ItemState.FAILED, error=exc)
        # Only a journal needs the input's fingerprint: it is what makes a key stable across
        # runs. Without one, an unkeyed item is simply known by its position.
        description = describe_input(input) if self.journal is not None else {}
        print_ = fingerprint(description) if description else ""
        key = key or print_ or f"item-{index}"
        it = _Item(
            index=index,
            key=key,
            # A caller's key plus the fingerprint: a changed prompt is a new row, not a reuse.
            journal_key=f"{key}@{print_}" if keyed else key,
            stem=self.claim_stem(_stem_of(input, key, keyed), key),
            input=input,
            description=description,
            cost=estimate_cost(input).usd,
        )
        try:
            return await self._process(it)
        except FalEditError as exc:
            await self.emit(ItemFailed(key=key, request_id=it.request_id, error=exc))
            cancelled = isinstance(exc, JobCancelledError)
            # Only fal's verdict on the job is final. After a failed download or a garbled
            # status the row stays submitted/completed, so a re-run re-attaches for free.
            if self.journal is not None and it.request_id is not None and _final(exc):
                await self.journal.record_failed(it.journal_key, exc)
            return it.result(ItemState.CANCELLED if cancelled else ItemState.FAILED, error=exc)

    async def _process(self, it: _Item) -> ItemResult:
        entry = await self.journal.get(it.journal_key) if self.journal is not None else None
        if entry is not None:
            resumed = await self._resume(it, entry)
            if resumed is not None:
                return resumed
        try:
            self.budget.reserve(it.cost)
        except BudgetExceededError as exc:
            return it.result(ItemState.NOT_SUBMITTED, error=exc)
        wire_input = it.input
        if not wire_input.is_resolved:  # bounded by the client's Limits.uploads
            wire_input = await self.client.uploader.resolve_input(wire_input)
        output = await self._submit_and_follow(it, wire_input)
        return await self._finish(it, output)

    async def _submit_and_follow(self, it: _Item, wire_input: EditImageInput) -> EditImageOutput:
        while True:
            it.attempts += 1
            try:
                async with self.jobs.slot() as epoch:

                    def on_retry(kind: str) -> None:
                        if kind == "rate_limit":
                            self.jobs.rate_limited(epoch)

                    handle = await self.client.submit(
                        wire_input, on_retry=on_retry, **self.submit_options
                    )
                    self.jobs.succeeded()
                    it.request_id, it.accepted = handle.request_id, it.accepted + 1
                    if self.journal is not None:
                        await self.journal.record_submitted(
                            it.journal_key,
                            handle.urls,
                            endpoint=str(handle.endpoint),
                            input=it.description,
                            attempts=it.attempts,
                            cost=it.cost,
                        )
                    await self.emit(
                        ItemSubmitted(key=it.key, request_id=handle.request_id, attempt=it.attempts)
                    )
                    return await self._follow(it, handle)
            except JobFailedError as exc:
                if it.attempts > self.job_retries or not _worth_retrying(exc):
                    raise
                self.budget.reserve(it.cost)

    async def _follow(self, it: _Item, handle: JobHandle) -> EditImageOutput:
        progress = _Progress(self, it.key, handle.request_id)
        try:
            completed = await handle.wait(on_update=progress.update)
        except anyio.get_cancelled_exc_class():
            self.cancelled_on_fal += 1  # wait() cancelled the fal job on its way out
            if self.journal is not None:
                await self.journal.record_cancelled(it.journal_key)
            raise
        output = await handle.fetch_result(completed)
        if self.journal is not None:
            await self.journal.record_completed(it.journal_key, output)
        await self.emit(ItemCompleted(key=it.key, request_id=handle.request_id))
        return output

    async def _finish(self, it: _Item, output: EditImageOutput) -> ItemResult:
        check_image_count(it.input, output, it.request_id)
        files = await self._download(it, output)
        if self.journal is not None:
            await self.journal.record_downloaded(it.journal_key, files)
        return it.result(ItemState.COMPLETED, output=output, files=files)

    async def _resume(self, it: _Item, entry: JournalEntry) -> ItemResult | None:
        """Finish a journaled item without paying again; None when it must be submitted."""
        if entry.state is JournalState.CANCELLED or entry.urls is None:
            return None
        it.attempts, it.request_id, it.resumed = entry.attempts, entry.request_id, True
        it.accepted = entry.attempts
        self.budget.committed += entry.cost * entry.attempts
        if entry.state is JournalState.DOWNLOADED and (
            self.download_to is None or await anyio.to_thread.run_sync(_intact, entry.files)
        ):
            output = parse(entry.output, EditImageOutput) if entry.output else None
            return it.result(ItemState.COMPLETED, output=output, files=entry.files)
        if entry.state is JournalState.FAILED:
            error = JobFailedError(
                request_id=entry.urls.request_id, error=entry.error, error_type=entry.error_type
            )
            await self.emit(ItemFailed(key=it.key, request_id=it.request_id, error=error))
            return it.result(ItemState.FAILED, error=error)
        # Submitted, completed, or downloaded with files gone: re-attach and finish.
        handle = JobHandle(
            request_id=entry.urls.request_id,
            endpoint=EndpointId.parse(entry.endpoint or DEFAULT_ENDPOINT),
            urls=entry.urls,
            client=self.client,
        )
        async with self.jobs.slot():
            output = await self._follow(it, handle)
        return await self._finish(it, output)

    async def _download(self, it: _Item, output: EditImageOutput) -> tuple[DownloadedFile, ...]:
        if self.download_to is None:
            return ()
        done = await download_all(
            self.client.transport,
            output.images,
            self.download_to,
            it.stem,
            retry=self.client.config.retry,
            limiter=self.downloads,
            max_bytes=self.client.config.limits.max_output_bytes,
            stats=self.client.stats,
            checksum=self.journal is not None,  # the journal re-checks files on a re-run
            return_exceptions=True,
        )
        for outcome in done:
            if isinstance(outcome, DownloadError):
                raise outcome  # the item fails; its files that did arrive stay for a re-run
        files = tuple(f for f in done if isinstance(f, DownloadedFile))
        await self.emit(ItemDownloaded(key=it.key, request_id=it.request_id or "", files=files))
        return files


def check_image_count(
    input: EditImageInput, output: EditImageOutput, request_id: str | None
) -> EditImageOutput:
    """Refuse a result with more images than asked for: a hostile or broken server must not
    make us download (or pay attention to) an unbounded number of files."""
    if len(output.images) > input.num_images:
        raise ProtocolError(
            f"result has {len(output.images)} images but num_images={input.num_images}",
            request_id=request_id,
        )
    return output


def _intact(files: Sequence[DownloadedFile]) -> bool:
    """True when every journaled file is still on disk with its size and checksum."""
    for file in files:
        try:
            if file.path.stat().st_size != file.size:
                return False
            if file.sha256 is not None:
                with file.path.open("rb") as f:
                    if hashlib.file_digest(f, "sha256").hexdigest() != file.sha256:
                        return False
        except OSError:
            return False
    return True


@attrs.define
class _Progress:
    """Turns one job's status updates into progress events."""

    runner: _Runner
    key: str
    request_id: str
    started: bool = False

    async def update(self, update: JobStatus) -> None:
        if self.runner.on_event is None:
            return  # nobody listens: build no events
        key, rid, emit = self.key, self.request_id, self.runner.emit
        if isinstance(update, Queued):
            await emit(ItemQueued(key=key, request_id=rid, position=update.position))
        if isinstance(update, InProgress | Completed) and not self.started:
            self.started = True
            await emit(ItemStarted(key=key, request_id=rid))
        if isinstance(update, InProgress | Completed):
            for entry in update.logs:
                await emit(ItemLog(key=key, request_id=rid, entry=entry))


def _final(exc: FalEditError) -> bool:
    """True for a failure a re-run cannot undo without paying for a new job."""
    return isinstance(exc, JobFailedError | BudgetExceededError)


def _worth_retrying(exc: JobFailedError) -> bool:
    """Infrastructure failures get another job; the model's own refusals never do."""
    if exc.status == 422 or exc.timeout_type == "user":
        return False
    if exc.retryable is not None:
        return exc.retryable
    return exc.error_type in RETRYABLE_ERROR_TYPES


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


@asynccontextmanager
async def edit_many(
    client: AsyncClient,
    items: Iterable[BatchItem] | AsyncIterable[BatchItem],
    *,
    concurrency: int | None = None,
    download_to: str | os.PathLike[str] | None = None,
    downloads: int | None = None,
    job_retries: int = 1,
    budget: float | Decimal | None = None,
    journal: str | os.PathLike[str] | Journal | None = None,
    adaptive: bool = True,
    on_event: EventCallback | None = None,
    **submit_options: Any,
) -> AsyncIterator[Batch]:
    """Run many edits; see :meth:`AsyncClient.edit_many`."""
    limits = client.config.limits
    needed = (concurrency or limits.jobs) + (downloads or limits.downloads) + limits.uploads
    if needed > limits.max_connections:
        # Jobs would queue for sockets behind each other's status streams: say so up front.
        raise InputError(
            "concurrency",
            concurrency,
            f"at most {limits.max_connections - needed + (concurrency or limits.jobs)} with "
            f"Limits.max_connections={limits.max_connections} (raise it to go higher)",
        )
    jobs = AdaptiveLimiter(concurrency or limits.jobs, adaptive=adaptive)
    runner = _Runner(
        client=client,
        jobs=jobs,
        downloads=anyio.CapacityLimiter(downloads or limits.downloads),
        download_to=Path(download_to) if download_to is not None else None,
        job_retries=job_retries,
        on_event=on_event,
        budget=_Budget(Decimal(str(budget)) if budget is not None else None),
        journal=None,
        submit_options=submit_options,
    )
    pipeline = jobs.limit + limits.uploads + runner.downloads.total_tokens
    send, receive = anyio.create_memory_object_stream[ItemResult](jobs.limit)
    batch = Batch(receive, runner)
    async with AsyncExitStack() as stack:
        if isinstance(journal, Journal):
            runner.journal = journal  # the caller's: they close it
        elif journal is not None:
            runner.journal = Journal(journal)
            stack.push_async_callback(runner.journal.aclose)
        if runner.journal is not None:
            await runner.journal.open()
        if runner.download_to is not None:
            await anyio.to_thread.run_sync(remove_stale_parts, runner.download_to)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_feed, runner, batch, items, send, int(pipeline))
            try:
                yield batch
            finally:
                tg.cancel_scope.cancel()
                receive.close()


async def _feed(
    runner: _Runner,
    batch: Batch,
    items: Iterable[Any] | AsyncIterable[Any],
    send: MemoryObjectSendStream[ItemResult],
    pipeline: int,
) -> None:
    slots = anyio.CapacityLimiter(pipeline)

    async def one(index: int, item: Any, token: object) -> None:
        try:
            result = await runner.run(index, item)
            batch._record(result)
            # Deliver before freeing the slot: the consumer gets it before new items compete.
            await send.send(result)
        finally:
            slots.release_on_behalf_of(token)

    async with send, anyio.create_task_group() as tg:
        index = 0
        async for item in _aiter(items):
            token = object()
            await slots.acquire_on_behalf_of(token)
            tg.start_soon(one, index, item, token)
            index += 1
