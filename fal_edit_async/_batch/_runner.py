"""One batch item's way through the pipeline: validate, upload, submit, follow, download.

The :class:`Runner` holds what a batch shares (limits, budget, journal, output names) and runs
each item to an :class:`ItemResult`; ``edit_many`` in this package's ``__init__`` feeds it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import attrs

from .._converter import input_from_dict, parse
from .._core import Core
from .._downloads import download_outcomes
from .._endpoint import DEFAULT_ENDPOINT, EndpointId
from .._exceptions import (
    BudgetExceededError,
    DownloadError,
    FalEditError,
    InputError,
    JobCancelledError,
    JobFailedError,
)
from .._files import safe_stem
from .._job import JobHandle, call_back, submit
from .._models import (
    Completed,
    DownloadedFile,
    EditImageInput,
    EditImageOutput,
    InProgress,
    JobStatus,
    Queued,
    SubmitOptions,
)
from .._pricing import estimate_cost
from .._protocol import check_image_count, job_retryable
from .._statistics import RetryKind
from .._uploads import Uploader
from ._adaptive import AdaptiveLimiter
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
from ._items import (
    EventCallback,
    ItemResult,
    ItemState,
    describe_input,
    fingerprint,
    split_item,
)
from ._journal import Journal, JournalEntry, JournalState

__all__ = ["Budget", "Runner"]


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


@attrs.define
class Budget:
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
class Runner:
    """What every item of one batch shares, and the steps each item goes through."""

    core: Core
    uploader: Uploader
    jobs: AdaptiveLimiter
    downloads: anyio.CapacityLimiter
    download_to: Path | None
    job_retries: int
    on_event: EventCallback | None
    budget: Budget
    journal: Journal | None
    submit_options: SubmitOptions
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
            wire_input = await self.uploader.resolve_input(wire_input)
        output = await self._submit_and_follow(it, wire_input)
        return await self._finish(it, output)

    async def _submit_and_follow(self, it: _Item, wire_input: EditImageInput) -> EditImageOutput:
        while True:
            it.attempts += 1
            try:
                async with self.jobs.slot() as epoch:

                    def on_retry(kind: RetryKind) -> None:
                        if kind == "rate_limit":
                            self.jobs.rate_limited(epoch)

                    handle = await submit(
                        self.core,
                        self.uploader,
                        wire_input,
                        on_retry=on_retry,
                        **self.submit_options,
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
                # A second job is a second payment: the budget must cover it too.
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
            core=self.core,
        )
        async with self.jobs.slot():
            output = await self._follow(it, handle)
        return await self._finish(it, output)

    async def _download(self, it: _Item, output: EditImageOutput) -> tuple[DownloadedFile, ...]:
        if self.download_to is None:
            return ()
        done = await download_outcomes(
            self.core,
            output.images,
            self.download_to,
            it.stem,
            limiter=self.downloads,
            max_bytes=self.core.config.limits.max_output_bytes,
            checksum=self.journal is not None,  # the journal re-checks files on a re-run
        )
        for outcome in done:
            if isinstance(outcome, DownloadError):
                raise outcome  # the item fails; its files that did arrive stay for a re-run
        files = tuple(f for f in done if isinstance(f, DownloadedFile))
        await self.emit(ItemDownloaded(key=it.key, request_id=it.request_id or "", files=files))
        return files


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

    runner: Runner
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
    return job_retryable(
        status=exc.status,
        error_type=exc.error_type,
        timeout_type=exc.timeout_type,
        header=exc.retryable,
    )
