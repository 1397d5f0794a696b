"""AsyncClient: submit edit jobs to fal's queue and follow them to their results."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.lowlevel

from ._batch import Batch, check_image_count, edit_many
from ._batch_items import BatchItem, EventCallback
from ._config import ClientConfig, Limits, Polling, RetryPolicy, Timeouts
from ._converter import input_to_wire
from ._downloads import DownloadedFile, download_all
from ._endpoint import DEFAULT_ENDPOINT, EndpointId
from ._exceptions import JobTimeoutError, ProtocolError
from ._job import JobHandle, UpdateCallback
from ._journal import Journal
from ._models import (
    CancelOutcome,
    EditImageInput,
    EditImageOutput,
    ImageFile,
    JobStatus,
    SubmitReceipt,
)
from ._protocol import JobUrls, submit_headers
from ._retry import with_retries
from ._transport import HttpTransport
from ._uploads import Uploader

__all__ = ["DEFAULT_ENDPOINT", "AsyncClient"]


class AsyncClient:
    """An async client for fal's queue API, owning one HTTP session.

    Every argument is keyword-only and optional: with ``FAL_KEY`` set (and ``FAL_QUEUE_URL``
    when not talking to fal itself) ``AsyncClient()`` is ready to use. Arguments win over
    the environment; ``config`` replaces it entirely.

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
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        polling: Polling | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        if config is None:
            config = ClientConfig.from_env(
                api_key=api_key,
                queue_url=queue_url,
                rest_url=rest_url,
                timeouts=timeouts,
                limits=limits,
                retry=retry,
                polling=polling,
            )
        self.config = config
        self.transport = HttpTransport(config)
        #: Counts of retries by kind, streams, polls and cancels, for reports and tests.
        self.stats: Counter[str] = Counter()
        #: Turns local files and bytes into URLs (inline or uploaded), once per content.
        self.uploader = Uploader(
            self.transport,
            config,
            inline_threshold=config.limits.inline_bytes,
            max_bytes=config.limits.max_input_bytes,
            stats=self.stats,
        )
        self._downloads = anyio.CapacityLimiter(config.limits.downloads)

    def __repr__(self) -> str:
        return f"AsyncClient(queue_url={self.config.queue_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session; a second call does nothing."""
        await self.transport.aclose()

    def statistics(self) -> Mapping[str, int]:
        """A snapshot of the counters: retries by kind, streams, polls, cancels, requests."""
        return {**self.stats, "requests": self.transport.requests_sent}

    def handle(self, request_id: str, *, endpoint: str = DEFAULT_ENDPOINT) -> JobHandle:
        """Re-attach to a job by its request id (URLs built with the sub-path dropped)."""
        ep = EndpointId.parse(endpoint)
        urls = JobUrls.build(self.config.queue_url, ep, request_id)
        return JobHandle(request_id=request_id, endpoint=ep, urls=urls, client=self)

    async def submit(
        self,
        input: EditImageInput,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        webhook_url: str | None = None,
        priority: str | None = None,
        hint: str | None = None,
        start_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> JobHandle:
        """Enqueue one edit job and return its handle.

        Local files and bytes in ``image_urls`` are inlined as data URIs when small and
        uploaded to fal storage otherwise (once per content per client); an unreadable,
        empty or non-image file raises :class:`InputError`. Everything is validated before
        the request is sent. The POST is retried only when
        fal cannot have enqueued the job (a 429, a gateway 502/503/504 without a request id,
        or a connection that never opened). After an ambiguous failure (a reset or timeout
        once the body was sent) it is **not** retried unless
        ``RetryPolicy(retry_ambiguous_submit=True)``: a second POST may be a second paid job.

        Each POST runs shielded from cancellation, so a cancelled caller still learns the
        request id, and the job is then cancelled on fal before the cancellation propagates.

        Args:
            input: the edit to run.
            endpoint: the fal endpoint id.
            webhook_url: a URL fal POSTs the result to when the job ends.
            priority: ``"normal"`` or ``"low"``.
            hint: a runner routing hint.
            start_timeout: seconds (above 1) the job may wait to start before fal gives up.
            headers: extra request headers (never ``Authorization``).
            on_retry: hears the kind of each retried failure (``"rate_limit"``, ...).
        """
        ep = EndpointId.parse(endpoint)
        if not isinstance(input, EditImageInput):
            raise TypeError(f"submit() takes an EditImageInput, not {type(input).__name__}")
        extra = submit_headers(
            priority=priority, hint=hint, start_timeout=start_timeout, headers=headers
        )
        if not input.is_resolved:
            input = await self.uploader.resolve_input(input)
        body = input_to_wire(input)
        params = {"fal_webhook": webhook_url} if webhook_url else None
        url = f"{self.config.queue_url}/{ep.submit_path}"

        async def post() -> SubmitReceipt:
            with anyio.CancelScope(shield=True):
                resp = await self.transport.request(
                    "POST", url, json=body, params=params, headers=extra
                )
            resp.raise_for_status()
            return _receipt(resp.json("submit"), self.config.queue_url, ep)

        receipt = await with_retries(
            post, policy=self.config.retry, submit=True, stats=self.stats, on_retry=on_retry
        )
        self.stats["submits"] += 1
        handle = JobHandle(
            request_id=receipt.request_id,
            endpoint=ep,
            urls=JobUrls.from_receipt(self.config.queue_url, ep, receipt),
            receipt=receipt,
            client=self,
        )
        try:
            await anyio.lowlevel.checkpoint()  # deliver a cancellation that arrived mid-POST
        except anyio.get_cancelled_exc_class():
            await handle.cancel_quietly()
            raise
        return handle

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
        input: EditImageInput,
        *,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        **submit_options: Any,
    ) -> EditImageOutput:
        """Submit one edit, wait for it, and return its typed output: fal-client's ``subscribe``.

        ``timeout`` covers the whole call. When it passes, or the calling task is cancelled,
        the job is cancelled on fal before the error or cancellation propagates.

        Args:
            input: the edit to run.
            timeout: seconds for submit, wait and result together.
            on_update: called with each status update (a plain or an async function).
            submit_options: passed to :meth:`submit` (``endpoint``, ``priority``, ...).
        """
        deadline = None if timeout is None else anyio.current_time() + timeout
        handle = await self.submit(input, **submit_options)
        remaining = None if deadline is None else max(0.0, deadline - anyio.current_time())
        try:
            output = await handle.result(timeout=remaining, on_update=on_update)
        except JobTimeoutError as exc:
            raise JobTimeoutError(handle.request_id, timeout or 0.0) from exc  # the caller's figure
        return check_image_count(input, output, handle.request_id)

    async def download(
        self,
        images: EditImageOutput | Sequence[ImageFile],
        dest: str | os.PathLike[str],
        *,
        stem: str = "image",
        max_bytes: int | None = None,
    ) -> list[DownloadedFile]:
        """Download output images into ``dest`` as ``<stem>_<n>.<ext>``, atomically.

        Each file is streamed to a temporary file in ``dest``, checked (length, real image
        format) and renamed into place; truncated or failed downloads are retried; a file
        over ``max_bytes`` (default ``Limits.max_output_bytes``) is refused. No key is
        ever sent with a download. At most ``Limits.downloads`` run at once per client.

        Raises:
            ExceptionGroup: of :class:`DownloadError`, after every download has ended, when
                any failed; the others are on disk.
        """
        items = images.images if isinstance(images, EditImageOutput) else images
        return await download_all(
            self.transport,
            list(items),
            Path(dest),
            stem,
            retry=self.config.retry,
            limiter=self._downloads,
            max_bytes=max_bytes or self.config.limits.max_output_bytes,
            stats=self.stats,
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
        journal: str | os.PathLike[str] | Journal | None = None,
        adaptive: bool = True,
        on_event: EventCallback | None = None,
        **submit_options: Any,
    ) -> AbstractAsyncContextManager[Batch]:
        """Edit many images in parallel; results arrive as items finish.

        An async context manager yielding a :class:`Batch` to iterate. Items are inputs,
        JSON-like mappings of inputs, or ``(key, input)`` pairs, from a list or an async
        iterable of any length: items are pulled only as capacity frees up, so memory stays
        flat. One bad item (invalid input, unreadable file, model refusal, failed download)
        yields a failed :class:`ItemResult` with its cause and never stops the others.
        Leaving the block early cancels the items still running, on fal too.

        Args:
            items: what to edit.
            concurrency: jobs in flight on fal at most (default ``Limits.jobs``). Lowered
                on 429 and raised back gradually when ``adaptive``, never above this.
            download_to: a folder to download outputs into, as ``<input stem>_<n>.<ext>``,
                written atomically; None keeps only the URLs.
            downloads: files downloaded at once (default ``Limits.downloads``).
            job_retries: new jobs for an item whose job failed on fal's side (a runner
                failure), never for the model's refusals or validation errors.
            budget: USD; items whose estimated cost would cross it are not submitted
                (reported as ``not_submitted``); jobs already in flight finish.
            journal: a SQLite journal file (or an open :class:`Journal`). Each job's request
                id is recorded as soon as fal accepts it; running the same batch again with
                the same journal re-attaches to those jobs, skips items already downloaded
                (after checking their files) and submits only the rest, so a crash or
                Ctrl-C never pays twice for an item.
            adaptive: follow fal's rate limiting (AIMD) below ``concurrency``.
            on_event: called with each progress event (a plain or async function).
            submit_options: passed to :meth:`submit` (``endpoint``, ``priority``, ...).

        Usage::

            async with fal.edit_many(inputs, download_to="out") as batch:
                async for result in batch:
                    print(result.key, result.state, result.error or "")
            print(batch.summary())
        """
        return edit_many(
            self,
            items,
            concurrency=concurrency,
            download_to=download_to,
            downloads=downloads,
            job_retries=job_retries,
            budget=budget,
            journal=journal,
            adaptive=adaptive,
            on_event=on_event,
            **submit_options,
        )


def _receipt(payload: Any, queue_url: str, endpoint: EndpointId) -> SubmitReceipt:
    """The submit answer; a receipt missing its URLs still keeps the paid job's id."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("request_id"), str):
        raise ProtocolError("submit answer has no request_id", payload=payload)
    built = JobUrls.build(queue_url, endpoint, payload["request_id"])
    position = payload.get("queue_position")
    return SubmitReceipt(
        request_id=payload["request_id"],
        response_url=str(payload.get("response_url") or built.response_url),
        status_url=str(payload.get("status_url") or built.status_url),
        cancel_url=str(payload.get("cancel_url") or built.cancel_url),
        queue_position=position if isinstance(position, int) else None,
    )
