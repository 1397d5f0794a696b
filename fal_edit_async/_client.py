"""AsyncClient: the façade. It owns one core and hands it to every operation.

Every method here is a few lines: checking what the caller passed and delegating to the
module that does the work (``_job``, ``_downloads``, ``_batch``), so nothing below this
module ever sees the client.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack

import anyio

from ._batch import Batch, edit_many, writing
from ._batch._items import BatchItem, BatchSettings, EventCallback
from ._batch._ledger import JournalBackend, open_journal
from ._batch._reconcile_pass import reconcile_journal
from ._config import ClientConfig, Limits, Polling, RetryPolicy, Timeouts, check_timeout
from ._converter import as_input
from ._core import Core
from ._downloads import download_all
from ._endpoint import DEFAULT_ENDPOINT
from ._exceptions import InputError, JobTimeoutError, JournalLockedError, MissingCredentialsError
from ._job import JobHandle, UpdateCallback, attach, submit
from ._logging import setup_from_env
from ._models import (
    CancelOutcome,
    DownloadedFile,
    EditImageInput,
    EditImageOutput,
    ImageFile,
    JobStatus,
    SubmitOptions,
)
from ._name_template import DEFAULT_NAME_TEMPLATE
from ._protocol import check_image_count, check_submit_options
from ._reconcile_models import ReconcilePolicy, ReconcileReport
from ._statistics import ClientStatistics
from ._transport import AiohttpTransport, Transport
from ._uploads import Uploader

__all__ = ["DEFAULT_ENDPOINT", "AsyncClient"]


class ClientState(Enum):
    """Where a client is in its life."""

    UNOPENED = 1  # created; usable at once (the session opens on first use) or entered
    OPENED = 2  # entered with ``async with``; entering again is a bug
    CLOSED = 3  # closed for good: every call raises, a second close does nothing


class AsyncClient:
    """An async client for fal's queue API.

    Every argument is keyword-only and optional: with ``FAL_KEY`` set (and ``FAL_QUEUE_URL``
    when not talking to fal itself) ``AsyncClient()`` is ready to use. Arguments win over
    the environment; ``config`` replaces it entirely. ``transport`` replaces the default
    aiohttp transport (a :class:`MockTransport` in unit tests); the client closes it.

    A client is used once: after :meth:`aclose` (or the end of its ``async with`` block)
    every call raises ``RuntimeError``. It runs on asyncio only, and on one event loop: the
    first it is used on (:class:`EventLoopError` otherwise). For scripts, threads and
    notebooks, :class:`Client` is the same client behind blocking calls.

    Raises:
        MissingCredentialsError: no key (no ``FAL_KEY``, no ``api_key=``), before anything
            could be sent.

    Usage::

        async with AsyncClient() as fal:
            out = await fal.edit(EditImageInput(prompt="Make it pixel art", image_urls=[url]))
            print(out.images[0].url)
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
        setup_from_env()
        if transport is None:
            transport = AiohttpTransport(
                timeouts=config.timeouts,
                max_connections=config.limits.max_connections,
                user_agent=config.user_agent,
            )
        self._config = config
        self._state = ClientState.UNOPENED
        self._core = Core(config, transport)
        # One uploader per client: the same content is uploaded once for the client's life.
        self._uploader = Uploader(self._core)
        self._downloads = anyio.CapacityLimiter(config.limits.downloads)

    def __repr__(self) -> str:
        return f"AsyncClient(queue_url={self._config.queue_url!r})"

    @property
    def config(self) -> ClientConfig:
        """The configuration this client was built with (read-only)."""
        return self._config

    async def __aenter__(self) -> Self:
        if self._state is not ClientState.UNOPENED:
            raise RuntimeError(
                "this client was already entered or closed; create a new AsyncClient"
            )
        self._core.check_loop()  # trio, or a second loop: say so now, not at the first request
        self._state = ClientState.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport and its connections; a second call does nothing more.

        A job another task still waits on (``wait``, ``result``, ``edit``) is cancelled on
        fal first, all together and bounded by ``Timeouts.cancel``; that task then gets
        ``RuntimeError``, as every call on a closed client does. A call made while another
        task's close is under way returns once that close ended (its cancels sent).
        """
        self._state = ClientState.CLOSED
        await self._core.aclose()

    def statistics(self) -> ClientStatistics:
        """A snapshot of the counters: requests, submits, streams, polls, retries by kind."""
        return self._core.stats.snapshot()

    def handle(self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT) -> JobHandle:
        """Re-attach to a job by its request id (URLs built with the sub-path dropped)."""
        return attach(self._core, request_id, endpoint)

    async def submit(
        self, input: EditImageInput | Mapping[str, Any], **options: Unpack[SubmitOptions]
    ) -> JobHandle:
        """Enqueue one edit job and return its handle.

        Local files and bytes in ``image_urls`` are inlined as data URIs when small and
        uploaded to fal storage otherwise (once per content per client); an unreadable,
        empty or non-image file raises :class:`InputError`. Everything is validated before
        the request is sent. The POST is retried only when fal cannot have enqueued the job
        (a 429, a gateway 502/503/504 without a request id, or a connection that never
        opened). After an ambiguous failure (a reset or timeout once the body was sent) it is
        **not** retried unless ``RetryPolicy(retry_ambiguous_submit=True)``: a second POST
        may be a second paid job.

        Each POST runs shielded from cancellation, so a cancelled caller still learns the
        request id, and the job is then cancelled on fal before the cancellation propagates.

        Args:
            input: the edit to run: an :class:`EditImageInput`, or the model's JSON mapping
                (``{"prompt": ..., "image_urls": [...]}``), checked the same way.
            options: :class:`SubmitOptions`: ``endpoint``, ``webhook_url``, ``priority``
                (``"normal"`` or ``"low"``), ``hint``, ``start_timeout`` (seconds above 1
                the job may wait to start), ``headers`` (never ``Authorization``).
        """
        check_submit_options(options, "submit")
        self._core.check_loop()
        return await submit(self._core, self._uploader, as_input(input), **options)

    async def status(
        self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT, logs: bool = False
    ) -> JobStatus:
        """Poll one job's status by request id."""
        return await self.handle(request_id, endpoint=endpoint).status(logs=logs)

    async def result(
        self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT, timeout: float | None = None
    ) -> EditImageOutput:
        """Wait for a job by request id and return its output (see :meth:`JobHandle.result`)."""
        return await self.handle(request_id, endpoint=endpoint).result(timeout=timeout)

    async def cancel(self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT) -> CancelOutcome:
        """Ask fal to cancel a job; returns requested, already completed or not found."""
        return await self.handle(request_id, endpoint=endpoint).cancel()

    async def edit(
        self,
        input: EditImageInput | Mapping[str, Any],
        *,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        **options: Unpack[SubmitOptions],
    ) -> EditImageOutput:
        """Submit one edit, wait for it, and return its typed output: fal-client's ``subscribe``.

        ``timeout`` covers the whole call, uploads and submit retries included (a retry is
        never sent after it passed). When it passes, the calling task is cancelled, or
        ``on_update`` raises, the job is cancelled on fal before the error or cancellation
        propagates. A NaN or negative ``timeout`` is an :class:`InputError`, before anything
        is sent.

        Args:
            input: the edit to run: an :class:`EditImageInput` or its JSON mapping.
            timeout: seconds for submit, wait and result together.
            on_update: called with each status update (a plain or an async function).
            options: :class:`SubmitOptions`, as for :meth:`submit`.
        """
        check_submit_options(options, "edit")
        check_timeout(timeout)
        input = as_input(input)
        self._core.check_loop()  # here: under trio, uploads would fail first, less clearly
        accepted: list[JobHandle] = []

        async def on_accepted(handle: JobHandle) -> None:
            accepted.append(handle)  # a deadline during the submit still names the job

        # One scope for all of it, uploads and submit retries included. On expiry, each step
        # cancels what it started (a job fal accepted is cancelled on fal) on its way out.
        with anyio.move_on_after(timeout):
            handle = await submit(
                self._core, self._uploader, input, on_accepted=on_accepted, **options
            )
            completed = await handle.wait(on_update=on_update)
            output = await handle.fetch_result(completed)
            return check_image_count(input, output, handle.request_id)
        raise JobTimeoutError(accepted[0].request_id if accepted else None, timeout or 0.0)

    async def download(
        self,
        images: EditImageOutput | Sequence[ImageFile],
        dest: str | os.PathLike[str],
        *,
        stem: str = "image",
        max_bytes: int | None = None,
        fsync: bool = False,
    ) -> list[DownloadedFile]:
        """Download output images into ``dest`` as ``<stem>_<n>.<ext>``, atomically.

        Each file is streamed to a temporary file in ``dest``, checked (length, real image
        format) and renamed into place; truncated or failed downloads are retried; a file
        over ``max_bytes`` (default ``Limits.max_output_bytes``) is refused. No key is
        ever sent with a download. At most ``Limits.downloads`` run at once per client.
        ``fsync=True`` flushes each file to the disk before renaming it into place, so it
        survives a power cut too, not only a crash of the process.

        Raises:
            ExceptionGroup: of :class:`DownloadError`, after every download has ended, when
                any failed; the others are on disk.
        """
        # Here, not only in the core: inside the task group its RuntimeError would come out
        # as an ExceptionGroup, and a data: URI never reaches it.
        self._core.check_open()
        self._core.check_loop()
        if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes <= 0):
            raise InputError("max_bytes", max_bytes, "a positive number of bytes")
        items = images.images if isinstance(images, EditImageOutput) else images
        return await download_all(
            self._core,
            list(items),
            Path(dest),
            stem,
            limiter=self._downloads,
            max_bytes=self._config.limits.max_output_bytes if max_bytes is None else max_bytes,
            fsync=fsync,
        )

    def edit_many(
        self,
        items: Iterable[BatchItem] | AsyncIterable[BatchItem],
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
    ) -> AbstractAsyncContextManager[Batch]:
        """Edit many images in parallel; results arrive as items finish.

        An async context manager yielding a :class:`Batch` to iterate. Items are inputs,
        JSON-like mappings of inputs, or ``(key, input)`` pairs, from a list or an async
        iterable of any length: items are pulled only as capacity frees up, so memory stays
        flat. One bad item (invalid input, unreadable file, model refusal, failed download)
        yields a failed :class:`ItemResult` with its cause and never stops the others.
        Leaving the block early cancels the items still running, on fal too. Bad settings
        (``concurrency=0``, a negative or NaN ``budget``, an unknown or invalid option) raise
        at the call, before anything is sent.

        Args:
            items: what to edit.
            concurrency: jobs in flight on fal at most (default ``Limits.jobs``). Lowered
                on 429 and raised back gradually when ``adaptive``, never above this.
            download_to: a folder to download outputs into, named by ``name_template``,
                written atomically; None keeps only the URLs. It is created and proven
                writable before anything is sent. Each item's name is claimed once: unique
                in the batch, in any script (写真1 stays 写真1), and clear of the files
                already there, which are never replaced (``-2``, ``-3``... is added instead).
            downloads: files downloaded at once (default ``Limits.downloads``).
            job_retries: new jobs for an item whose job failed on fal's side (a runner
                failure), never for the model's refusals or validation errors.
            budget: USD; items whose estimated cost would cross it are not submitted
                (reported as ``not_submitted``); jobs already in flight finish.
            journal: a SQLite journal file (or an open :class:`Journal`), written by one
                process (and one batch) at a time, or a ``postgresql://`` address (or an open
                :class:`PostgresJournal`) that many workers share: each claims the items it
                works on, so the same items given to every worker are done once
                (``docs/many-machines.md``). Each submit is recorded before it is sent and
                its request id as soon as fal answers; running the same batch again with
                the same journal re-attaches to those jobs, downloads what was fetched before
                (into this ``download_to``), skips items already downloaded there, and
                submits only items that never had a job or whose job fal confirmed
                cancelled. Items are known by their content (and key), never their position.
            max_in_flight: jobs in flight at most across every worker of a shared journal
                (fal's account concurrency), kept in the database; also caps
                ``concurrency``.
            resubmit_unknown: submit again the items whose submit answer an earlier run
                lost (``ItemState.UNKNOWN``) and reconciling could not settle; fal may have
                run those jobs already.
            reconcile: how a journaled batch settles lost submits when it starts (see
                :meth:`reconcile`) and the start timeout its submits carry (default
                :class:`ReconcilePolicy`); ``ReconcilePolicy(strict=True)`` never submits an
                unknown item again. With a journal, ``webhook_url`` tracks each job by its
                webhook instead of a status stream: each job's URL is tagged with the batch,
                item and attempt, and a receiver (``fal_edit_async.webhooks.create_app``
                with ``sink=`` the same :class:`Journal`) records the events.
            retry_failed: submit again the items an earlier run recorded as failed.
            overwrite: let outputs replace files already in ``download_to`` that this batch
                does not own (another run's outputs, files named like outputs).
            name_template: how outputs are named (see :class:`NameTemplate`): ``{stem}``
                (the input's name), ``{n}`` (the image's index, from 0), ``{key}``,
                ``{request_id}``, ending in ``.{ext}``. A collision adds ``-2`` to
                ``{stem}`` (or to the end, without one). Checked at the call.
            adaptive: follow fal's rate limiting (AIMD) below ``concurrency``.
            on_event: called with each progress event (a plain or async function).
                Without it no log lines are asked of fal (``ItemLog`` would be their
                only reader), so each job's status events stay small.
            options: :class:`SubmitOptions` for every job, as for :meth:`submit`.

        Usage::

            async with fal.edit_many(inputs, download_to="out") as batch:
                async for result in batch:
                    print(result.key, result.state, result.error or "")
            print(batch.summary())

        Raises:
            JournalLockedError: on entering, when another process writes the journal, or
                another batch of this process writes the very journal object given.
        """
        self._core.check_open()  # before a journal is created, not grouped by the batch's tasks
        settings = BatchSettings.build(
            self._config.limits,
            concurrency=concurrency,
            downloads=downloads,
            download_to=download_to,
            job_retries=job_retries,
            budget=budget,
            journal=journal,
            adaptive=adaptive,
            on_event=on_event,
            submit_options=options,
            resubmit_unknown=resubmit_unknown,
            retry_failed=retry_failed,
            overwrite=overwrite,
            name_template=name_template,
            max_in_flight=max_in_flight,
            reconcile=reconcile,
        )
        return self._on_this_loop(edit_many(self._core, self._uploader, items, settings))

    @asynccontextmanager
    async def _on_this_loop(
        self, batch: AbstractAsyncContextManager[Batch]
    ) -> AsyncIterator[Batch]:
        """``batch``, entered once the loop is known to be right: under trio or on another loop
        one clear error, rather than each item failing with it."""
        self._core.check_loop()
        async with batch as entered:
            yield entered

    async def reconcile(
        self,
        journal: str | os.PathLike[str] | JournalBackend,
        *,
        policy: ReconcilePolicy | None = None,
    ) -> ReconcileReport:
        """Settle a journal's lost submits (``unknown`` rows) from evidence, never guessing.

        Each row is decided in order by: its webhook record; the job fal's error answer named,
        if fal still knows it; exactly one request in fal's request history with the body
        sent (adopted: followed by the next run, or completed from the history's output when
        fal's queue forgot it); two or more such requests (``ambiguous``: never submitted
        again); after ``sent_at + start_timeout + longest_run + settle``, a complete history
        walk with no match (``resubmittable``: the next run submits it, unless ``strict``).
        Anything else stays ``unknown`` (a match, too, while another row that sent the same
        body has no settled job). Each fate lands only on the ``unknown`` row that was read,
        so running this beside live workers of a shared ledger is safe. A batch does this
        itself when it opens a journal.

        Raises:
            JournalLockedError: a batch is writing the journal (another process's, or one of
                this process's writing this very SQLite journal object).
            JournalError: the journal cannot be opened.
        """
        self._core.check_open()
        policy = ReconcilePolicy() if policy is None else policy
        if not isinstance(policy, ReconcilePolicy):
            raise InputError("policy", policy, "a ReconcilePolicy, or None")
        if isinstance(journal, JournalBackend):
            if writing(journal) and not journal.shared:  # a shared one: see above
                raise JournalLockedError(journal.where, "a batch of this process")
            return await reconcile_journal(self._core, journal, policy)
        async with open_journal(journal) as opened:
            return await reconcile_journal(self._core, opened, policy)
