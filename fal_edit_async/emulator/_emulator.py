"""The public :class:`Emulator`: two loopback servers, the job engine, and the test hooks."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from enum import Enum
from types import MappingProxyType, TracebackType
from typing import Any, Self

from aiohttp import web

from ._app import build_queue_app
from ._cdn import build_cdn_app
from ._engine import CancelRunning, Engine, ProcessingTime, cancel_ignore_rate
from ._faults import Faults
from ._profile import FAL_PROFILE, Profile
from ._state import STATE_RANK, Counters, EmulatedJob, JobState

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "Emulator"]

#: The largest upload or submit body accepted (fal_client switches to multipart above this).
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# How long aiohttp waits for open requests when the emulator stops; every held request is
# released first, so this is only a backstop.
_SHUTDOWN_TIMEOUT = 2.0


class _Lifecycle(Enum):
    UNOPENED = "unopened"  # constructed, not listening
    OPEN = "open"  # both sites listening
    CLOSED = "closed"  # stopped; cannot be restarted


class Emulator:
    """A local fal queue, REST storage and CDN that the official fal_client talks to unchanged.

    Two loopback origins: ``queue_url`` serves the queue API (submit, status, status stream,
    result, cancel) and the REST storage API (``rest_url`` is the same origin); ``cdn_url``
    serves output and uploaded files and takes CDN uploads. Jobs run a deterministic Pillow
    "edit" of their first input image. Everything is in memory.

    Args:
        workers: how many jobs may be IN_PROGRESS at once; the rest wait IN_QUEUE.
        processing_time: seconds each job spends IN_PROGRESS, or a callable returning them.
        log_lines: log lines each job emits while IN_PROGRESS.
        api_key: the only key accepted; when None any non-empty ``Key`` is accepted and
            :attr:`api_key` is a generated one (the only one, with ``Profile.require_key``).
        faults: random fault rates (see :class:`Faults`); none by default.
        host: the interface to listen on.
        port: the queue/REST port (0 picks a free one).
        cdn_port: the CDN port (0 picks a free one).
        fast_images: serve cached placeholder images of the right size and format instead of
            editing the input, for benchmarks. Inputs are still fetched (an unreachable one
            still fails the job) but not decoded, and ``auto`` size means 1024x1024.
        output_bytes: pad each output image to about this many bytes (download benchmarks).
        max_upload_bytes: the largest upload, submit body, or fetched input image.
        keepalive_interval: seconds between ``: keep-alive`` comments on status streams.
        fetch_timeout: seconds allowed to fetch an http(s) input image.
        retryable_header: send ``X-Fal-Retryable`` with each failed job's result, as fal
            usually does. False leaves it out, as fal may, so a client has only the error
            type (``X-Fal-Error-Type``, ``error_type``) to decide whether to try again.
        cancel_running: what a cancel of an IN_PROGRESS job does. On fal it is best
            effort: the job gets a signal and may still complete, and bill.
            ``"honour"`` (the default) stops it at once: it completes ``client_cancelled``,
            unbilled. ``"ignore"`` answers the same 202 ``CANCELLATION_REQUESTED`` but lets
            the job run on to a normal, billed completion with output. A float from 0 to 1
            ignores that fraction of such cancels, drawn once per job from an RNG of its own
            seeded with ``faults.seed`` (so fault draws are unchanged). Queued jobs are
            always removed, whatever this says.
        result_ttl: seconds a job's result is kept after it completed; then the request id
            is forgotten: status, status stream and result answer 404
            ``{"detail": "Request not found"}`` and cancel 404 ``{"status": "NOT_FOUND"}``,
            as for an id never seen (fal keeps results about 3600 s, about 360 s when they
            are 10 KB or more; what it answers afterwards is unconfirmed). The job's CDN
            files stay. None (the default) keeps results for ever; tests that must not
            depend on the clock call :meth:`expire_result` instead.
        history_lag: seconds before a submitted request shows in the request history
            (``GET <rest_url>/v1/models/requests/by-endpoint``); fal does not say how soon.
        webhook_retries: how many more times a webhook delivery not answered 2xx is sent
            (fal: 10, over about 2 hours).
        webhook_retry_base: seconds before the first retry, doubling up to 30 minutes.
        profile: how closely to play fal where it is untidier than its documentation (see
            :class:`Profile`; :meth:`fal_like` turns it all on). The documented behaviour
            by default.

    Usage::

        async with Emulator(workers=2) as emu:
            url = emu.url_for("fal-ai/gpt-image-1/edit-image")  # POST inputs here
            ...
            assert emu.counters.cdn_auth_requests == 0

    For the official client, point its module constants here before creating the client:
    ``fal_client.client.QUEUE_URL_FORMAT = emu.queue_url + "/"``, ``REST_URL = emu.rest_url``,
    ``CDN_URL = emu.cdn_url`` (and set ``FAL_KEY``).
    """

    def __init__(
        self,
        *,
        workers: int = 4,
        processing_time: ProcessingTime = 0.0,
        log_lines: int = 3,
        api_key: str | None = None,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        fast_images: bool = False,
        output_bytes: int | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        keepalive_interval: float = 15.0,
        fetch_timeout: float = 10.0,
        retryable_header: bool = True,
        cancel_running: CancelRunning = "honour",
        result_ttl: float | None = None,
        history_lag: float = 0.0,
        webhook_retries: int = 10,
        webhook_retry_base: float = 15.0,
        profile: Profile | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if log_lines < 0:
            raise ValueError(f"log_lines must not be negative, got {log_lines}")
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key must be a non-empty string or None")
        if result_ttl is not None and not (
            isinstance(result_ttl, int | float)
            and not isinstance(result_ttl, bool)
            and 0 <= result_ttl < math.inf
        ):
            raise ValueError(f"result_ttl must be None or seconds >= 0, got {result_ttl!r}")
        if not (0 <= history_lag < math.inf) or not (0 <= webhook_retry_base < math.inf):
            raise ValueError("history_lag and webhook_retry_base must be finite seconds >= 0")
        if webhook_retries < 0:
            raise ValueError(f"webhook_retries must not be negative, got {webhook_retries}")
        self._profile = profile = profile or Profile()
        self._api_key = api_key or "emulator-" + secrets.token_hex(8)
        self._required_key = self._api_key if profile.require_key else api_key
        self._host, self._port, self._cdn_port = host, port, cdn_port
        self._max_body = max_upload_bytes
        self._engine = Engine(
            workers=workers,
            processing_time=processing_time,
            log_lines=log_lines,
            faults=faults or Faults(),
            fast_images=fast_images,
            output_bytes=output_bytes,
            fetch_timeout=fetch_timeout,
            max_fetch_bytes=max_upload_bytes,
            keepalive_interval=keepalive_interval,
            retryable_header=retryable_header,
            cancel_ignore_rate=cancel_ignore_rate(cancel_running),
            result_ttl=result_ttl,
            history_lag=history_lag,
            webhook_retries=webhook_retries,
            webhook_retry_base=webhook_retry_base,
            profile=profile,
        )
        self._runners: list[web.AppRunner] = []
        self._state = _Lifecycle.UNOPENED
        self._queue_url = self._cdn_url = self._rest_url = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start both servers; return once they listen. Returns the emulator itself."""
        if self._state is not _Lifecycle.UNOPENED:
            raise RuntimeError(f"cannot start an emulator that is {self._state.value}")
        self._state = _Lifecycle.OPEN
        try:
            await self._engine.open()
            accepts, body = self._accepts, self._max_body
            if self._profile.separate_rest:
                queue_app = build_queue_app(self._engine, accepts, body, "queue")
                self._queue_url = await self._serve(queue_app, self._port)
                rest_app = build_queue_app(self._engine, accepts, body, "rest")
                self._rest_url = await self._serve(rest_app, 0)
            else:
                queue_app = build_queue_app(self._engine, accepts, body)
                self._queue_url = self._rest_url = await self._serve(queue_app, self._port)
            self._cdn_url = await self._serve(
                build_cdn_app(self._engine, self._max_body), self._cdn_port
            )
        except BaseException:
            await self.aclose()
            raise
        self._engine.queue_url = self._queue_url
        self._engine.store.cdn_url = self._cdn_url
        return self

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        self._runners.append(runner)
        await runner.setup()
        site = web.TCPSite(runner, self._host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        # A wildcard address is where we listen, not where clients should go.
        host = "127.0.0.1" if self._host in ("0.0.0.0", "", "::") else self._host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{bound_port}"

    async def aclose(self) -> None:
        """Release every gate, stop jobs, close both servers. Safe to call twice."""
        if self._state is _Lifecycle.CLOSED:
            return
        self._state = _Lifecycle.CLOSED
        await self._engine.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _accepts(self, authorization: str | None) -> bool:
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "key" or not key:
            return False
        return self._required_key is None or key == self._required_key

    # -- addresses and state ---------------------------------------------------------------

    @property
    def queue_url(self) -> str:
        """The queue API origin, ``http://127.0.0.1:<port>`` (no trailing slash)."""
        return self._queue_url

    @property
    def rest_url(self) -> str:
        """The REST storage API origin: :attr:`queue_url`'s, or its own with
        ``Profile.separate_rest`` (as fal's ``rest.fal.ai``)."""
        return self._rest_url

    @property
    def api_url(self) -> str:
        """The platform API origin (fal's ``api.fal.ai``), where the request history that
        reconciling reads is served: :attr:`rest_url`'s. Give it to a client as ``api_url``
        (``FAL_API_URL``), or a journal's lost submits are looked up at fal itself."""
        return self._rest_url

    @property
    def profile(self) -> Profile:
        """How closely the emulator plays fal's untidy ways."""
        return self._profile

    @classmethod
    def fal_like(cls, **options: Any) -> Emulator:
        """An emulator as unforgiving as the live service: :data:`FAL_PROFILE`, cancels of
        running jobs ignored (fal's cancel is best effort), results kept an hour.

        Any argument of :class:`Emulator` may be given, and wins.
        """
        defaults: dict[str, Any] = {
            "profile": FAL_PROFILE,
            "cancel_running": "ignore",
            "result_ttl": 3600.0,
        }
        return cls(**(defaults | options))

    @property
    def cdn_url(self) -> str:
        """The CDN origin (a different port): output files, uploads."""
        return self._cdn_url

    @property
    def api_key(self) -> str:
        """A key the emulator accepts: the one given, or a generated one."""
        return self._api_key

    @property
    def counters(self) -> Counters:
        """Live counters of requests, jobs, downloads and injected faults."""
        return self._engine.counters

    @property
    def jobs(self) -> Mapping[str, EmulatedJob]:
        """Every job ever submitted, by request id (a read-only view)."""
        return MappingProxyType(self._engine.jobs)

    @property
    def faults(self) -> Faults:
        """The random fault rates in force."""
        return self._engine.plan.faults

    @property
    def internal_errors(self) -> list[BaseException]:
        """Exceptions from emulator bugs while running jobs (such jobs end ``internal_error``)."""
        return self._engine.internal_errors

    @property
    def jwks_url(self) -> str:
        """Where the emulator publishes its webhook public keys (a JWKS, as fal does)."""
        return f"{self._queue_url}/.well-known/jwks.json"

    @property
    def webhook_jwks(self) -> dict[str, Any]:
        """The JWKS document served at :attr:`jwks_url`."""
        return self._engine.webhooks.signer.jwks()

    @property
    def webhook_log(self) -> list[tuple[str, str, int]]:
        """Every webhook POST sent: (request id, kind, HTTP status or 0 for no answer).

        Kinds: ``genuine``, ``duplicate``, ``tampered`` and ``stale`` (see ``Faults``).
        """
        return self._engine.webhooks.log

    def rotate_webhook_key(self, *, keep_old: bool = True) -> None:
        """Sign webhooks with a new key from now on, as fal rotates its keys. The old key
        stays in the JWKS unless ``keep_old=False``."""
        self._engine.webhooks.signer.rotate(keep_old=keep_old)

    @property
    def history_lag(self) -> float:
        """Seconds before a request shows in the request history; may be set."""
        return self._engine.history.lag

    @history_lag.setter
    def history_lag(self, value: float) -> None:
        if not 0 <= value < math.inf:
            raise ValueError(f"history_lag must be finite seconds >= 0, got {value!r}")
        self._engine.history.lag = value

    async def wait_webhooks(self, n: int) -> None:
        """Return once at least ``n`` webhooks were delivered (answered 2xx) in total."""
        await self.wait_until(lambda: self.counters.webhooks_sent >= n)

    def url_for(self, endpoint_id: str) -> str:
        """The submit URL of an endpoint id, e.g. ``fal-ai/gpt-image-1/edit-image``."""
        return f"{self._queue_url}/{endpoint_id.strip('/')}"

    # -- gates -----------------------------------------------------------------------------

    def hold_jobs(self) -> None:
        """Let jobs start (IN_PROGRESS, logs emitted) but not finish until released."""
        self._engine.job_gate.hold()

    def release_jobs(self, n: int | None = None) -> None:
        """Let ``n`` held jobs finish (waiting ones first, then the next to arrive).

        With ``n=None`` every job finishes, including future ones, until :meth:`hold_jobs`.
        """
        self._engine.job_gate.release(n)

    def hold_queue(self) -> None:
        """Keep new jobs IN_QUEUE: no job starts until released."""
        self._engine.queue_gate.hold()

    def release_queue(self, n: int | None = None) -> None:
        """Let ``n`` more jobs start; with ``n=None`` stop holding the queue altogether."""
        self._engine.queue_gate.release(n)
        self._engine.dispatch()
        self._engine.notify()

    def hold_downloads(self) -> None:
        """Make CDN downloads stop after the headers, before the body, until released."""
        self._engine.download_gate.hold()

    def release_downloads(self, n: int | None = None) -> None:
        """Let ``n`` held downloads send their body; with ``n=None`` stop holding them."""
        self._engine.download_gate.release(n)

    def release_slow(self) -> None:
        """Let every response delayed by a ``slow_response`` fault go now."""
        gate = self._engine.slow_gate
        gate.release(gate.waiting)

    @property
    def jobs_held(self) -> int:
        """How many jobs are waiting at the job gate."""
        return self._engine.job_gate.waiting

    @property
    def downloads_held(self) -> int:
        """How many downloads are waiting at the download gate."""
        return self._engine.download_gate.waiting

    # -- waiters ---------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every request and change.

        Usage::

            await emu.wait_until(lambda: emu.counters.downloads >= 3)
        """
        await self._engine.waiters.wait_until(predicate)

    async def wait_for_state(self, request_id: str, state: str | JobState) -> EmulatedJob:
        """Return the job once it has reached ``state`` or a later one.

        Raises:
            KeyError: no job has this request id.
        """
        job = self._engine.jobs[request_id]
        target = STATE_RANK[JobState(state)]
        await self.wait_until(lambda: STATE_RANK[job.state] >= target)
        return job

    async def wait_submitted(self, n: int) -> None:
        """Return once at least ``n`` jobs have been queued in total."""
        await self.wait_until(lambda: self.counters.submits >= n)

    async def wait_completed(self, n: int) -> None:
        """Return once at least ``n`` jobs have completed (successfully or not) in total."""
        await self.wait_until(lambda: self.counters.completed >= n)

    async def wait_in_flight(self, n: int) -> None:
        """Return once at least ``n`` jobs are IN_PROGRESS at the same time."""
        await self.wait_until(lambda: self.counters.in_flight >= n)

    async def wait_jobs_held(self, n: int) -> None:
        """Return once at least ``n`` jobs wait at the job gate (see :meth:`hold_jobs`)."""
        await self.wait_until(lambda: self._engine.job_gate.waiting >= n)

    async def wait_downloads_held(self, n: int) -> None:
        """Return once at least ``n`` downloads wait at the download gate."""
        await self.wait_until(lambda: self._engine.download_gate.waiting >= n)

    async def wait_slow_held(self, n: int) -> None:
        """Return once at least ``n`` responses are being delayed by ``slow_response``."""
        await self.wait_until(lambda: self._engine.slow_gate.waiting >= n)

    async def wait_status_stream_open(self, request_id: str, n: int = 1) -> None:
        """Return once at least ``n`` status streams for the job are open at the same time."""
        job = self._engine.jobs[request_id]
        await self.wait_until(lambda: job.open_streams >= n)

    # -- injecting -------------------------------------------------------------------------

    def add_log(self, request_id: str, message: str, level: str = "INFO") -> None:
        """Append a log line to a job, as if the model printed it (streams get an event)."""
        self._engine.add_log(self._engine.jobs[request_id], message, level)

    def fail_job(self, request_id: str, error_type: str = "runner_disconnected") -> None:
        """End a queued or running job at once, as if the model failed.

        Args:
            request_id: the job.
            error_type: ``validation`` (a 422 with a detail list) or a fal error type
                such as ``runner_disconnected`` (see ``ERROR_TYPES``).

        Raises:
            KeyError: no job has this request id.
            ValueError: the job already completed, or the error type is unknown.
        """
        self._engine.fail(self._engine.jobs[request_id], error_type)

    def expire_result(self, request_id: str, *, files: bool = False) -> None:
        """Forget a completed job's result now, as fal does some time after completion.

        From then on the queue API answers for this request id as for an unknown one (404;
        see ``result_ttl``). The record stays in :attr:`jobs` with ``expired=True``. Calling
        it again is harmless.

        Args:
            request_id: the job.
            files: also delete the job's output files from the CDN (they answer 404);
                by default they stay, as fal's CDN files have a lifetime of their own.

        Raises:
            KeyError: no job has this request id.
            ValueError: the job has not completed, so it has no result yet.
        """
        self._engine.expire_result(self._engine.jobs[request_id], files=files)

    def expire_all_results(self, *, files: bool = False) -> int:
        """Forget the result of every completed job whose result has not expired yet.

        Jobs still queued or running are untouched. ``files`` is as in
        :meth:`expire_result`. Returns how many results were forgotten.
        """
        done = [
            job
            for job in self._engine.jobs.values()
            if job.state is JobState.COMPLETED and not job.expired
        ]
        return sum(self._engine.expire_result(job, files=files) for job in done)

    def schedule_fault(
        self,
        route: str,
        kind: str,
        *,
        times: int = 1,
        status: int | None = None,
        retry_after: float | None = None,
        after_enqueue: bool | None = None,
        delay: float | None = None,
        error_type: str | None = None,
        location: str | None = None,
    ) -> None:
        """Inject ``kind`` on the next ``times`` requests of ``route``, before random faults.

        Args:
            route: ``submit``, ``status``, ``stream``, ``result``, ``cancel``, ``storage``,
                ``upload``, ``download`` or ``job``.
            kind: ``rate_limit``, ``server_error``, ``ingress_error``, ``connection_reset``,
                ``slow_response`` on any route but ``job``; ``stream_drop`` and
                ``refuse_stream`` on ``stream``; ``truncated_download`` (or ``truncated``)
                on ``download``; ``model_failure`` on ``job``; ``server_error_after_queue``
                on ``submit`` (the job is queued for real, runs and bills, but the answer
                is a 5xx whose ``x-fal-request-id`` names it; for a lost answer instead,
                ``connection_reset`` with ``after_enqueue=True``); ``result_in_progress`` on
                ``result`` (a completed job's result answers 400 ``Request is still in
                progress``; taken only by GETs of completed jobs). A hostile server, only
                ever scheduled: ``request_error`` on the queue routes (fal's request error
                for ``error_type``, or a bare ``status``, 499 by default, with an empty
                body); ``redirect`` (302 to ``location``) on submit, status, stream,
                result, cancel and download; ``echo_key`` (a 401 quoting the Authorization
                header) on the queue routes and storage; ``foreign_urls`` (the submit
                answer's URLs on ``location``) and ``other_job_urls`` (its URLs name the
                job submitted before) on submit; ``invalid_json`` on status, stream and
                result; ``unknown_status`` on status and stream; ``unknown_fields`` on
                status, stream and result; ``sse_split``, ``sse_crlf``, ``sse_noise`` and
                ``sse_hostile`` (all three) on stream; ``zero_images``, ``extra_images`` and
                ``hostile_names`` on result; ``wrong_content_type`` and ``oversized`` on
                download (see ``HOSTILE_KINDS``).
            times: how many requests (or jobs) get the fault.
            status: the HTTP status for ``server_error``, ``server_error_after_queue``,
                ``ingress_error``, ``refuse_stream``.
            retry_after: the ``Retry-After`` seconds for ``rate_limit``.
            after_enqueue: for ``connection_reset``, let the request take effect before the
                drop: on submit the job is queued, on cancel the cancel is carried out.
                Without it a reset submit queues nothing and a reset cancel does nothing.
                (A ``slow_response`` cancel is carried out when it is finally answered.)
            delay: the seconds a ``slow_response`` waits (unless :meth:`release_slow`).
            error_type: for ``model_failure``, ``validation`` or an error type such as
                ``runner_disconnected``; for ``request_error``, an error type.
            location: the target URL of ``redirect`` and the origin of ``foreign_urls``.
        """
        given = {
            "status": status,
            "retry_after": retry_after,
            "after_enqueue": after_enqueue,
            "delay": delay,
            "error_type": error_type,
            "location": location,
        }
        options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        self._engine.plan.schedule(route, kind, times, options)

    def clear_faults(self) -> None:
        """Drop every scheduled fault that has not fired yet."""
        self._engine.plan.clear()
