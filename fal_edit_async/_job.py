"""JobHandle: one fal job, followed to its result, cancelled when its waiter goes away."""

from __future__ import annotations

import inspect
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractContextManager, aclosing, nullcontext
from typing import Any, TypeAlias, Unpack

import anyio
import anyio.lowlevel
import attrs

from ._config import check_timeout
from ._converter import input_to_wire, parse
from ._core import ClientClosedError, Core
from ._endpoint import DEFAULT_ENDPOINT, EndpointId
from ._exceptions import (
    APIError,
    FalEditError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    ProtocolError,
    TransportError,
)
from ._models import (
    CancelOutcome,
    Completed,
    EditImageInput,
    EditImageOutput,
    InProgress,
    JobStatus,
    JobUrls,
    LogEntry,
    Queued,
    SubmitOptions,
    SubmitReceipt,
    UnknownStatus,
)
from ._protocol import (
    api_error,
    cancel_outcome,
    from_fal,
    job_urls,
    parse_receipt,
    result_not_ready,
    retryable_header,
    submit_target,
    urls_from_receipt,
)
from ._retry import retry_kind, with_retries
from ._statistics import RetryKind
from ._status_stream import fetch_status, raw_statuses
from ._transport import Response
from ._uploads import Uploader

__all__ = ["JobHandle", "UpdateCallback", "attach", "submit"]

#: Called with each status update; may be a plain function or a coroutine function.
UpdateCallback: TypeAlias = Callable[[JobStatus], "Awaitable[Any] | Any"]

_LogKey: TypeAlias = tuple[Any, ...]


def _log_key(entry: LogEntry) -> _LogKey:
    # fal's own CLI de-duplicates by (timestamp, message); level and source only sharpen it.
    return (entry.timestamp, entry.message, entry.level, entry.source)


def _same_state(a: JobStatus | None, b: JobStatus) -> bool:
    if a is None or type(a) is not type(b):
        return False
    if isinstance(a, Queued) and isinstance(b, Queued):
        return a.position == b.position
    if isinstance(a, UnknownStatus) and isinstance(b, UnknownStatus):
        return a.status == b.status
    return True


async def call_back(callback: UpdateCallback | None, update: JobStatus) -> None:
    """Call a sync or async update callback."""
    if callback is not None:
        result = callback(update)
        if inspect.isawaitable(result):
            await result


@attrs.frozen(kw_only=True, eq=False)
class JobHandle:
    """One submitted job: follow it, wait for it, fetch its result, or cancel it.

    Get one from :meth:`AsyncClient.submit`, or re-attach to any job with
    :meth:`AsyncClient.handle` and its request id.
    """

    request_id: str
    endpoint: EndpointId
    urls: JobUrls
    receipt: SubmitReceipt | None = None
    _core: Core = attrs.field(alias="core", repr=False)

    async def status(self, *, logs: bool = False) -> JobStatus:
        """Poll the job's status once."""
        return await fetch_status(self._core, self.urls, logs=logs)

    async def updates(self, *, logs: bool = True) -> AsyncGenerator[JobStatus, None]:
        """Yield Queued / InProgress / Completed updates until the job completes.

        Reads fal's server-sent events stream, reconnecting when it drops and polling when it
        is refused or keeps dropping. An update is yielded only when something changed, never
        twice across reconnects, and its ``logs`` hold only the entries not yielded before.
        Use ``contextlib.aclosing`` when breaking out early.
        """
        seen = _Seen(2 * self._core.config.limits.max_log_lines)
        last: JobStatus | None = None
        limit, unknown = self._core.config.polling.max_unknown_statuses, 0
        statuses = raw_statuses(self._core, self.urls, logs=logs)
        async with aclosing(statuses):
            while True:
                try:
                    status = await anext(statuses)
                except StopAsyncIteration:
                    return
                except ProtocolError as exc:
                    raise exc.for_request(self.request_id) from exc
                self._core.check_open()  # an update read as the client closed: not one to act on
                if isinstance(status, UnknownStatus):
                    unknown += 1
                    if unknown >= limit:
                        raise ProtocolError(
                            f"status {status.status!r} unknown to this client, {unknown} times "
                            "in a row (Polling.max_unknown_statuses)",
                            payload=dict(status.payload),
                            request_id=self.request_id,
                        )
                else:
                    unknown = 0
                if isinstance(status, InProgress | Completed) and status.logs:
                    fresh = tuple(e for e in status.logs if seen.add(_log_key(e)))
                    if len(fresh) < len(status.logs):  # some were yielded before
                        status = attrs.evolve(status, logs=fresh)
                if _same_state(last, status) and not getattr(status, "logs", ()):
                    continue
                last = status
                yield status

    async def logs(self) -> AsyncGenerator[LogEntry, None]:
        """Yield each log line once, as it arrives, until the job completes."""
        async with aclosing(self.updates(logs=True)) as updates:
            async for update in updates:
                for entry in getattr(update, "logs", ()):
                    yield entry

    async def wait(
        self,
        *,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        cancel_on_exit: bool = True,
        logs: bool = True,
    ) -> Completed:
        """Wait until the job completes; return its final status with every log line.

        When ``timeout`` passes, the calling task is cancelled, or ``on_update`` raises, the
        job is cancelled on fal (a shielded, time-bounded PUT) before
        :class:`JobTimeoutError`, the cancellation or the callback's error propagates, so an
        abandoned job is not paid for. ``cancel_on_exit=False`` leaves that to the caller (a
        batch records what fal answers to its cancel). ``timeout`` is checked first: NaN or
        a negative number is an :class:`InputError`. ``logs=False`` asks fal for no log
        lines at all (smaller status events): updates and the result then have none.
        """
        check_timeout(timeout)
        # The last lines only: a job that logs without end must not fill the memory.
        collected: deque[LogEntry] = deque(maxlen=self._core.config.limits.max_log_lines)
        # Cancelled by the client's aclose() (see _on_close); a batch (cancel_on_exit=False)
        # cancels its own jobs, and waits without a deadline: no scopes to enter per job.
        following = anyio.CancelScope() if cancel_on_exit else None
        # move_on_after, not fail_after: only this scope's own deadline means "timed out",
        # never a TimeoutError raised by a callback or a library underneath.
        deadline = anyio.move_on_after(timeout) if timeout is not None else None
        try:
            with (
                following or nullcontext(),
                self._on_close(following),
                deadline or nullcontext(),
            ):
                async with aclosing(self.updates(logs=logs)) as updates:
                    async for update in updates:
                        collected.extend(getattr(update, "logs", ()))
                        await self._call_back(on_update, update, cancel_on_exit)
                        if isinstance(update, Completed):
                            if len(collected) == len(update.logs):  # no earlier lines
                                return update
                            return attrs.evolve(update, logs=tuple(collected))
        except anyio.get_cancelled_exc_class():
            if cancel_on_exit:
                await self.cancel_quietly()
            raise
        if following is not None and following.cancelled_caught:
            msg = f"the client was closed while waiting for job {self.request_id} (cancelled)"
            raise RuntimeError(msg)
        if deadline is None or not deadline.cancelled_caught:
            raise AssertionError("unreachable: raw_statuses ends only after COMPLETED")
        if cancel_on_exit:
            await self.cancel_quietly()
        raise JobTimeoutError(self.request_id, timeout or 0.0)

    def _on_close(self, following: anyio.CancelScope | None) -> AbstractContextManager[None]:
        """While waiting: should the client be closed, stop following (nothing more can be
        read from it) and cancel the job, as this waiter no longer can."""
        if following is None:
            return nullcontext()

        async def on_close() -> None:
            following.cancel()
            await self.cancel_quietly()

        return self._core.on_close(on_close)

    async def _call_back(
        self, callback: UpdateCallback | None, update: JobStatus, cancel_on_exit: bool
    ) -> None:
        """The caller's callback; when it raises, its caller is going away: cancel the job."""
        try:
            await call_back(callback, update)
        except Exception:
            if cancel_on_exit:
                await self.cancel_quietly()
            raise

    async def result(
        self, *, timeout: float | None = None, on_update: UpdateCallback | None = None
    ) -> EditImageOutput:
        """Wait for the job and return its typed output.

        Raises:
            JobFailedError: the job completed with an error; the result endpoint's detail,
                fal's error type and the job's logs are attached.
            JobCancelledError: the job was cancelled.
            JobTimeoutError: ``timeout`` passed; the job was asked to cancel.
        """
        completed = await self.wait(timeout=timeout, on_update=on_update)
        return await self.fetch_result(completed)

    async def fetch_result(self, completed: Completed | None = None) -> EditImageOutput:
        """Fetch the output of a completed job (no waiting)."""
        core = self._core

        async def once() -> EditImageOutput:
            resp = await core.request("GET", self.urls.response_url)
            if resp.ok:
                return self._output(resp)
            error = api_error(resp.status, resp.headers, resp.body)
            succeeded = completed is not None and not completed.failed
            if resp.status == 404 and succeeded and from_fal(error.body):
                # fal answers COMPLETED for a request id it does not know, then 404 here (a
                # proxy's 404 page is a failed GET, below).
                raise NotFoundError(
                    "no result for this request id: fal does not know it, or its result "
                    "expired (fal keeps results for about an hour)",
                    status=404,
                    body=error.body,
                    request_id=self.request_id,
                )
            failed = completed is not None and completed.failed
            if _cancelled(completed, resp.status, error):
                raise JobCancelledError(self.request_id)
            if _not_the_jobs_answer(completed, resp.status, error):
                raise error  # retried like any failed GET, or left for a re-attach
            if failed or resp.status in (400, 422) or error.error_type:
                raise JobFailedError(
                    request_id=self.request_id,
                    error=(completed.error if completed else None) or str(error.args[0]),
                    error_type=(completed.error_type if completed else None) or error.error_type,
                    detail=error.body,
                    status=resp.status,
                    logs=completed.logs if completed else (),
                    retryable=retryable_header(resp.headers.get("x-fal-retryable")),
                    timeout_type=error.timeout_type,
                )
            raise error

        def classify(exc: Exception) -> RetryKind | None:
            if isinstance(exc, APIError) and result_not_ready(exc.status, exc.body):
                return "not_ready"  # fal's result store lags its status: ask again
            return retry_kind(exc, submit=False, policy=core.config.retry)

        return await with_retries(
            once, policy=core.config.retry, stats=core.stats, classify=classify
        )

    def _output(self, resp: Response) -> EditImageOutput:
        if resp.status == 202:  # "accepted, still running": a status, not a result
            raise _not_ready(resp, None, self.request_id)
        try:
            payload = resp.json("result")
            if result_not_ready(resp.status, payload):  # {"status": "IN_PROGRESS"}
                raise _not_ready(resp, payload, self.request_id)
            output = parse(payload, EditImageOutput)
        except ProtocolError as exc:
            raise exc.for_request(self.request_id) from exc
        if not output.images:  # a paid job that produced nothing must not pass as done
            raise ProtocolError(
                "the result has no images", payload=payload, request_id=self.request_id
            )
        return output

    async def cancel(self) -> CancelOutcome:
        """Ask fal to cancel the job; returns what fal answered (not found is not an error)."""
        core = self._core

        async def once() -> CancelOutcome:
            resp = await core.request("PUT", self.urls.cancel_url)
            return cancel_outcome(resp.status, resp.headers, resp.body)

        core.stats.cancels_sent += 1
        return await with_retries(once, policy=core.config.retry, stats=core.stats)

    async def cancel_quietly(self) -> CancelOutcome | None:
        """Cancel, shielded from the caller's cancellation and bounded by ``Timeouts.cancel``.

        Used on the way out of a deadline or a cancelled task, where raising would hide the
        original reason; returns None when the cancel could not be delivered in time, or at
        all: by a closed client (whose ``aclose`` cancelled the jobs still waited on).
        """
        if not self._core.open:
            return None
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(self._core.config.timeouts.cancel),
            self._core.finishing(),  # a close meanwhile waits for this cancel to land
        ):
            try:
                return await self.cancel()
            except (FalEditError, RuntimeError):  # RuntimeError: the transport closed after all
                return None
        return None


def _not_ready(resp: Response, body: Any, request_id: str) -> APIError:
    """A 2xx result answer that says the result is not there yet; retried as not ready."""
    return APIError(
        "the result is not ready yet", status=resp.status, body=body, request_id=request_id
    )


class _Seen:
    """The log lines already yielded, the most recent ``size`` of them remembered."""

    def __init__(self, size: int) -> None:
        self._size = size
        # OrderedDict, not dict: a dict's first key is found by skipping every slot deleted
        # before it, so evicting the oldest over and over would grow quadratic.
        self._keys: OrderedDict[_LogKey, None] = OrderedDict()

    def add(self, key: _LogKey) -> bool:
        """Remember ``key``; True when it is new."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True


def _cancelled(completed: Completed | None, status: int, error: APIError) -> bool:
    """True when a failed result GET is fal's word that the job was cancelled.

    That is ``client_cancelled``: on the status, or on a 499 answer (a status that said
    nothing of it may be how fal reports a cancel, which the protocol leaves unconfirmed).
    A bare 499, or ``client_disconnected``, is what a proxy answers when a connection
    closed early: it says nothing about the job, and taking it for a cancel would report a
    paid job cancelled, or have a rerun pay for the item again.
    """
    if completed is not None and completed.error_type == "client_cancelled":
        return not _not_the_jobs_answer(completed, status, error)
    if error.error_type == "client_cancelled":
        return status == 499 or completed is None
    # Nothing known of the job (a bare fetch_result()): a bare 499 is the only word there is.
    return status == 499 and completed is None and error.error_type is None


def _not_the_jobs_answer(completed: Completed | None, status: int, error: APIError) -> bool:
    """True for a failed result GET that is not the job's verdict on itself.

    A job whose status said it succeeded answers 200, so any other answer for it (a 429, a
    5xx, fal's 400 "Request is still in progress" while its result store catches up, a 404
    once the result expired) is about the GET, not the job. One that failed answers with its
    status's error type (a 499 that does not carry it is a proxy's, never the job's).
    Taking the gateway's failure for the job's would record a paid job as failed for good,
    or start a second one (or give a model's refusal the gateway's reason, and a retry it
    must not get).
    """
    if completed is None:
        return False
    if not completed.failed:
        return True
    if status == 499:  # a proxy's "client closed request", unless the job failed so
        return error.error_type is None or error.error_type != completed.error_type
    if not (status == 429 or status >= 500):
        return False
    return status == 429 or error.error_type != completed.error_type


def attach(core: Core, request_id: str, endpoint: str = DEFAULT_ENDPOINT) -> JobHandle:
    """A handle on an existing job, by its request id (URLs built with the sub-path dropped)."""
    ep = EndpointId.parse(endpoint)
    return JobHandle(
        request_id=request_id,
        endpoint=ep,
        urls=job_urls(core.config.queue_url, ep, request_id),
        core=core,
    )


async def submit(
    core: Core,
    uploader: Uploader,
    input: EditImageInput,
    *,
    on_retry: Callable[[RetryKind], None] | None = None,
    on_accepted: Callable[[JobHandle], Awaitable[None]] | None = None,
    cancel_on_exit: bool = True,
    on_closed: Callable[[JobHandle], Awaitable[None]] | None = None,
    body: dict[str, Any] | None = None,
    **options: Unpack[SubmitOptions],
) -> JobHandle:
    """Enqueue one edit job and return its handle (see :meth:`AsyncClient.submit`).

    ``body``: ``input_to_wire(input)`` when the caller built it already (a batch journals
    the body it sends before sending it), so the input is not serialised twice.

    ``on_retry`` hears the kind of each retried failure (a batch lowers its concurrency on
    ``"rate_limit"``). ``on_accepted`` is awaited, shielded, the moment fal's answer is read,
    even when the caller was cancelled meanwhile (a batch records the request id there).
    ``cancel_on_exit=False`` leaves cancelling a job whose caller went away to the caller.
    ``on_closed`` is awaited in its place when the client is closed during the submit, once
    the POST has landed: it cancels the job (a batch records what fal answers there).
    """
    ep, extra, params = submit_target(options)
    if not isinstance(input, EditImageInput):
        raise TypeError(f"submit() takes an EditImageInput, not {type(input).__name__}")
    if body is None:
        if not input.is_resolved:
            input = await uploader.resolve_input(input)
        body = input_to_wire(input)
    queue_url = core.config.queue_url
    url = f"{queue_url}/{ep.submit_path}"

    # Closing the client while the POST is in flight: aclose's hook lets the POST land
    # (aclose bounds it by Timeouts.cancel) and then cancels the job it made, as it does
    # for a task waiting on a job; else the answer is lost and the job runs on, paid for.
    settled = anyio.Event()
    posting = False  # a POST is in flight, or answered and not yet made a handle
    made: list[JobHandle] = []
    closed_on: list[bool] = []

    async def on_close() -> None:
        closed_on.append(True)
        if posting:
            await settled.wait()
        if made and on_closed is not None:
            await on_closed(made[0])
        elif made and cancel_on_exit:
            await made[0].cancel_quietly()

    async def post() -> SubmitReceipt:
        nonlocal posting
        # The POST is shielded, so a deadline that passed before it must stop it here: no
        # job is paid for after the caller stopped waiting. Whatever the transport must do
        # before its first request (load certificates: a hung mount blocks) is done here
        # too, where a deadline or Ctrl-C can still end the wait.
        await core.prepare()
        await anyio.lowlevel.checkpoint_if_cancelled()  # a prepare that ignored a cancel
        # The caller's deadline (edit(timeout=), a batch's) still bounds the wait for the
        # answer, Timeouts.cancel after it: the answer is worth waiting for (it names a job
        # that may be paid for), but not for as long as Timeouts.submit.
        bound = anyio.current_effective_deadline() + core.config.timeouts.cancel
        with anyio.CancelScope(shield=True):
            posting = True
            try:
                with anyio.CancelScope(deadline=bound) as waited:
                    resp = await core.request(
                        "POST",
                        url,
                        json=body,
                        params=params,
                        headers=extra,
                        read_timeout=core.config.timeouts.submit,
                    )
            except BaseException:
                posting = False
                raise
        if waited.cancelled_caught:
            posting = False
            raise TransportError(
                "no answer to the submit by the deadline: fal may have queued the job, and "
                "its request id is not known (fal's request history lists it)",
                url=url,
                sent=True,
            )
        resp.raise_for_status()
        return parse_receipt(resp.json("submit"), queue_url, ep)

    with core.on_close(on_close):
        try:
            receipt = await with_retries(
                post, policy=core.config.retry, submit=True, stats=core.stats, on_retry=on_retry
            )
            core.stats.submits += 1
            handle = JobHandle(
                request_id=receipt.request_id,
                endpoint=ep,
                urls=urls_from_receipt(queue_url, ep, receipt),
                receipt=receipt,
                core=core,
            )
            made.append(handle)
            if on_accepted is not None:
                with anyio.CancelScope(shield=True):
                    await on_accepted(handle)
        finally:
            settled.set()
    if closed_on:
        what = "cancelled" if cancel_on_exit or on_closed is not None else "left running"
        msg = f"the client was closed during the submit of job {handle.request_id} ({what})"
        raise ClientClosedError(msg)
    try:
        await anyio.lowlevel.checkpoint()  # deliver a cancellation that arrived mid-POST
    except anyio.get_cancelled_exc_class():
        if cancel_on_exit:
            await handle.cancel_quietly()
        raise
    return handle
