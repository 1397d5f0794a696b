"""The job engine: queue, concurrency slots, the "model" run, completion and webhooks.

Jobs start the moment a slot is free (and the queue gate allows), inside :meth:`Engine.dispatch`,
which runs synchronously on every event that could start one: a submit, a finished job, a
gate release. So there is no scheduler loop to poll, and a test that holds the queue knows that
no job can slip into IN_PROGRESS behind its back. Each running job is its own asyncio task;
cancelling a running job cancels that task, which then records ``client_cancelled``.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from ._faults import ERROR_TYPES, Fault, FaultPlan, Faults
from ._history import HistoryIndex
from ._model import EditModel, InputImageError
from ._profile import Profile, sloppy_log, sloppy_status
from ._state import Counters, EmulatedJob, JobQueue, JobState, input_key
from ._storage import FileStore
from ._sync import Gate, Waiters
from ._validation import field_error, validate_input
from ._webhooks import WebhookSender

__all__ = ["CancelRunning", "Engine", "ProcessingTime", "cancel_ignore_rate"]

#: Seconds a job runs: a number, or a callable drawing one per job (for distributions).
ProcessingTime = float | Callable[[], float]
#: What a cancel of an IN_PROGRESS job does: ``"honour"`` it, ``"ignore"`` it, or ignore
#: this fraction (0 to 1) of such cancels.
CancelRunning = Literal["honour", "ignore"] | float

#: The documented behaviour: no untidy switch on.
DOCUMENTED = Profile()
_LOG_STEPS = ("Preparing inputs", "Editing image", "Encoding outputs")


def cancel_ignore_rate(value: CancelRunning) -> float:
    """The fraction of cancels of running jobs to ignore, from a ``cancel_running`` value.

    Raises:
        ValueError: not ``"honour"``, ``"ignore"`` or a number from 0 to 1.
    """
    if value == "honour":
        return 0.0
    if value == "ignore":
        return 1.0
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise ValueError(
        f"cancel_running must be 'honour', 'ignore' or a probability from 0 to 1, got {value!r}"
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Engine:
    """Owns the jobs and runs them; the HTTP layer and the public Emulator sit on top.

    Args:
        workers: how many jobs may be IN_PROGRESS at once.
        processing_time: seconds each job spends IN_PROGRESS (before the job gate).
        log_lines: log lines each job emits while IN_PROGRESS, spread over that time.
        faults: the random fault rates.
        fast_images: serve cached placeholder images instead of editing the input.
        output_bytes: pad every output image to about this many bytes.
        fetch_timeout: seconds allowed to fetch an http(s) input image.
        max_fetch_bytes: the largest input image fetched over http(s).
        keepalive_interval: seconds between SSE keep-alive comments.
        retryable_header: send ``X-Fal-Retryable`` with failed results (False omits it).
        cancel_ignore_rate: the fraction of cancels of running jobs that are ignored.
        result_ttl: seconds a completed job's result is kept (None: for ever).
        history_lag: seconds before a submitted request appears in the request history.
        webhook_retries: how many times a failed webhook delivery is tried again.
        webhook_retry_base: seconds before the first webhook retry (doubling).
        profile: how closely to play fal's untidy ways (see :class:`Profile`).
    """

    def __init__(
        self,
        *,
        workers: int,
        processing_time: ProcessingTime,
        log_lines: int,
        faults: Faults,
        fast_images: bool,
        output_bytes: int | None,
        fetch_timeout: float,
        max_fetch_bytes: int,
        keepalive_interval: float,
        retryable_header: bool,
        cancel_ignore_rate: float = 0.0,
        result_ttl: float | None = None,
        history_lag: float = 0.0,
        webhook_retries: int = 10,
        webhook_retry_base: float = 15.0,
        profile: Profile = DOCUMENTED,
    ) -> None:
        self.workers = workers
        self.profile = profile
        self.result_ttl = result_ttl
        self.cancel_ignore_rate = cancel_ignore_rate
        # Its own RNG, so ignoring cancels does not shift the sequence of fault draws.
        self._cancel_rng = random.Random(faults.seed)
        self.keepalive_interval = keepalive_interval
        self.retryable_header = retryable_header
        self.processing_time = processing_time
        self.log_lines = log_lines
        self.counters = Counters()
        self.plan = FaultPlan(faults, self.counters.faults_injected)
        self.history = HistoryIndex(history_lag)
        self.webhooks = WebhookSender(
            self.counters,
            self.plan,
            retries=webhook_retries,
            retry_base=webhook_retry_base,
            notify=self.notify,
        )
        self.store = FileStore()
        self.model = EditModel(
            store=self.store,
            fast_images=fast_images,
            output_bytes=output_bytes,
            fetch_timeout=fetch_timeout,
            max_fetch_bytes=max_fetch_bytes,
            refuse_loopback=profile.refuse_loopback_inputs,
        )
        self.jobs: dict[str, EmulatedJob] = {}
        self.queue = JobQueue()
        self.waiters = Waiters()
        self.queue_gate = Gate(self.notify)
        self.job_gate = Gate(self.notify)
        self.download_gate = Gate(self.notify)
        self.slow_gate = Gate(self.notify)
        self.slow_gate.hold()  # slow answers wait here until their delay or release_slow()
        self.queue_url = ""
        self.closing = False
        self.session: aiohttp.ClientSession | None = None
        self.internal_errors: list[BaseException] = []
        self.streaming: set[EmulatedJob] = set()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the HTTP session used to fetch input images and send webhooks."""
        self.session = self.model.session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Stop every job and background task, wake every waiter, close the session."""
        self.closing = True
        for gate in (self.queue_gate, self.job_gate, self.download_gate):
            gate.release()
        self.slow_gate.release(self.slow_gate.waiting)
        for job in list(self.streaming):
            job.touch()
        for job in self.jobs.values():
            for handle in (job.timeout_handle, job.expiry_handle):
                if handle is not None:
                    handle.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def notify(self) -> None:
        """Something changed: wake the waiters whose condition now holds."""
        self.waiters.check()

    # -- submit, cancel, state -------------------------------------------------------------

    def submit(
        self,
        *,
        endpoint_id: str,
        app_root: str,
        body: Any,
        headers: dict[str, str],
        webhook_url: str | None,
        timeout: float | None,
    ) -> EmulatedJob:
        """Enqueue a new job and start it if a slot is free."""
        job = EmulatedJob(
            request_id=_request_id(),
            endpoint_id=endpoint_id,
            app_root=app_root,
            input=body,
            input_hash=input_key(body),
            priority=headers.get("X-Fal-Queue-Priority"),
            hint=headers.get("X-Fal-Runner-Hint"),
            timeout=timeout,
            webhook_url=webhook_url,
            headers=headers,
        )
        self.jobs[job.request_id] = job
        self.history.record(job)
        self.queue.push(job)
        self.counters.submits += 1
        self.counters.submits_by_input[job.input_hash] += 1
        if timeout is not None:
            loop = asyncio.get_running_loop()
            job.timeout_handle = loop.call_later(timeout, self._expire, job)
        self.dispatch()
        self.notify()
        return job

    def urls(self, job: EmulatedJob) -> dict[str, str]:
        """The sub-path-free URLs of a job, as fal returns them."""
        base = f"{self.queue_url}/{job.app_root}/requests/{job.request_id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def cancel(self, job: EmulatedJob) -> str:
        """Ask a job to stop: ``CANCELLATION_REQUESTED`` or ``ALREADY_COMPLETED``.

        A queued job is always removed. A running job only gets a signal, as on fal: it
        stops (and completes ``client_cancelled``) unless this cancel is one of the
        ``cancel_ignore_rate`` ignored, in which case it runs on. The choice is made once
        per job: later cancels of a job that ignored one are ignored too.
        """
        self.counters.cancels += 1
        if job.state is JobState.COMPLETED:
            return "ALREADY_COMPLETED"
        if job.cancelled or job.cancel_ignored:  # already signalled
            return "CANCELLATION_REQUESTED"
        if job.state is JobState.IN_QUEUE:
            job.cancelled = True
            self.queue.remove(job)
            self._finish_error(job, "client_cancelled")
        elif self._ignores_cancel():
            job.cancel_ignored = True
            self.counters.cancels_ignored += 1
            self.notify()
        else:
            job.cancelled = True
            if job.task is not None:
                job.task.cancel()
        return "CANCELLATION_REQUESTED"

    def _ignores_cancel(self) -> bool:
        rate = self.cancel_ignore_rate
        # No draw at 0 or 1, so "honour" and "ignore" consume nothing from the RNG.
        return rate >= 1.0 or (rate > 0.0 and self._cancel_rng.random() < rate)

    def fail(self, job: EmulatedJob, error_type: str) -> None:
        """End a queued or running job now with ``error_type`` (or ``validation``)."""
        if job.state is JobState.COMPLETED:
            raise ValueError(f"job {job.request_id} has already completed")
        if error_type not in ERROR_TYPES and error_type != "validation":
            raise ValueError(f"unknown error_type {error_type!r}")
        if job.state is JobState.IN_QUEUE:
            self.queue.remove(job)
        task = job.task
        self._finish_fault(job, Fault(kind="model_failure", error_type=error_type))
        if task is not None:  # finished first, so the task's end records nothing more
            task.cancel()

    def expire_result(self, job: EmulatedJob, *, files: bool = False) -> bool:
        """Forget a completed job's result (and with ``files`` its CDN files).

        Returns:
            False when the result had already expired (files are still removed).

        Raises:
            ValueError: the job has not completed, so it has no result to forget.
        """
        if job.state is not JobState.COMPLETED:
            raise ValueError(f"job {job.request_id} has not completed: no result to expire")
        if files:
            for url in job.output_urls:
                self.store.delete_url(url)
        if job.expiry_handle is not None:
            job.expiry_handle.cancel()
            job.expiry_handle = None
        if job.expired:
            return False
        job.expired = True
        self.counters.results_expired += 1
        job.touch()
        self.notify()
        return True

    def add_log(self, job: EmulatedJob, message: str, level: str = "INFO") -> None:
        """Append a log line to a job and wake its status streams."""
        entry = {"message": message, "level": level, "source": "USER", "timestamp": _now_iso()}
        if self.profile.sloppy_payloads:
            entry = sloppy_log(entry, len(job.logs))
        job.logs.append(entry)
        job.touch()
        self.notify()

    # -- running jobs ----------------------------------------------------------------------

    def dispatch(self) -> None:
        """Start queued jobs while a slot is free and the queue gate lets them through."""
        started = False
        while (
            not self.closing
            and self._running < self.workers
            and len(self.queue)
            and self.queue_gate.try_pass()
        ):
            job = self.queue.pop()
            if job is None:
                break
            self._start(job)
            started = True
        if started:
            self.notify()

    def _start(self, job: EmulatedJob) -> None:
        job.state = JobState.IN_PROGRESS
        job.ran = True
        job.started_at = time.monotonic()
        if job.timeout_handle is not None:  # the start deadline is met
            job.timeout_handle.cancel()
        self._running += 1
        self.counters.job_started()
        task = asyncio.get_running_loop().create_task(self._run(job))
        job.task = task
        self._tasks.add(task)
        # Bookkeeping lives in a done callback, not a ``finally``: a task cancelled before
        # its first step never enters the coroutine at all.
        task.add_done_callback(functools.partial(self._job_done, job))
        job.touch()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: EmulatedJob) -> None:
        try:
            await self._work(job)
        except Exception as exc:  # a bug in the emulator: keep serving, keep the evidence
            self.internal_errors.append(exc)
            self._finish_error(job, "internal_error")

    def _job_done(self, job: EmulatedJob, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        self.counters.job_stopped()
        job.task = None
        if task.cancelled() and not self.closing and job.state is not JobState.COMPLETED:
            # A task cancelled before its job completed was cancelled by Engine.cancel
            # (close is excluded above; fail() completes the job before cancelling).
            self._finish_error(job, "client_cancelled")
        self.dispatch()
        self.notify()

    async def _work(self, job: EmulatedJob) -> None:
        await self._emit_logs(job, self._duration())
        await self.job_gate.passage()
        failure = self.plan.take("model_failure")
        if failure is not None:
            self._finish_fault(job, failure)
            return
        errors = validate_input(job.input)
        if errors:
            self._finish_validation(job, errors)
            return
        try:
            images = await self.model.run(job)
        except InputImageError as exc:
            self._finish_validation(job, [exc.detail])
            return
        self._finish(job, 200, {"images": images}, {})

    def _duration(self) -> float:
        value = self.processing_time
        return float(value() if callable(value) else value)

    async def _emit_logs(self, job: EmulatedJob, duration: float) -> None:
        count = self.log_lines
        for index in range(count):
            step = _LOG_STEPS[index] if index < len(_LOG_STEPS) else f"Working (step {index + 1})"
            self.add_log(job, f"[{index + 1}/{count}] {step}")
            if duration > 0:
                await asyncio.sleep(duration / count)
        if duration > 0 and count == 0:
            await asyncio.sleep(duration)

    # -- completion ------------------------------------------------------------------------

    def _expire(self, job: EmulatedJob) -> None:
        """The start deadline (``X-Fal-Request-Timeout``) passed while the job was queued."""
        job.timeout_handle = None
        if job.state is not JobState.IN_QUEUE:
            return
        self.queue.remove(job)
        self._finish_error(job, "request_timeout", {"X-Fal-Request-Timeout-Type": "user"})

    def _finish_error(
        self, job: EmulatedJob, error_type: str, extra: dict[str, str] | None = None
    ) -> None:
        status, detail, retryable = ERROR_TYPES[error_type]
        headers = {"X-Fal-Error-Type": error_type, "X-Fal-Retryable": _bool(retryable)}
        headers.update(extra or {})
        body = {"detail": detail, "error_type": error_type}
        self._finish(job, status, body, headers, error=detail, error_type=error_type)

    def _finish_validation(self, job: EmulatedJob, errors: list[dict[str, Any]]) -> None:
        # fal reports a model's 422 on the status only as a generic error string (the same
        # one its webhooks use); the detail list is the result endpoint's body.
        self._finish(
            job,
            422,
            {"detail": errors},
            {"X-Fal-Retryable": "false"},
            error="Invalid status code: 422",
        )

    def _finish_fault(self, job: EmulatedJob, fault: Fault) -> None:
        kind = fault.error_type or "validation"
        if kind != "validation":
            self._finish_error(job, kind)
            return
        prompt = job.input.get("prompt") if isinstance(job.input, dict) else None
        msg = "The prompt was rejected by the model's content policy"
        self._finish_validation(
            job, [field_error(["prompt"], msg, "content_policy_violation", prompt)]
        )

    def _finish(
        self,
        job: EmulatedJob,
        status: int,
        body: Any,
        headers: dict[str, str],
        *,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        if not self.retryable_header:
            headers = {k: v for k, v in headers.items() if k != "X-Fal-Retryable"}
        job.state = JobState.COMPLETED
        job.completed_at = time.monotonic()
        job.result_status, job.result_body, job.result_headers = status, body, headers
        job.error, job.error_type = error, error_type
        self.counters.completed += 1
        if status == 200:  # the billing rule (Counters): output, and nothing else, is paid
            job.billed = True
            self.counters.billed += 1
            self.counters.billed_by_input[job.input_hash] += 1
        if job.timeout_handle is not None:
            job.timeout_handle.cancel()
        if self.result_ttl is not None and not self.closing:
            job.expires_at = job.completed_at + self.result_ttl
            loop = asyncio.get_running_loop()
            job.expiry_handle = loop.call_later(self.result_ttl, self.expire_result, job)
        job.touch()
        self.notify()
        if job.webhook_url and self.session is not None and not self.closing:
            task = asyncio.get_running_loop().create_task(self._deliver_webhook(job))
            self._track(task)

    async def _deliver_webhook(self, job: EmulatedJob) -> None:
        """Deliver the job's signed webhook, with retries (see ``_webhooks``)."""
        assert self.session is not None
        await self.webhooks.deliver(self.session, job)

    # -- status payloads -------------------------------------------------------------------

    def status_payload(
        self, job: EmulatedJob, with_logs: bool, logs_from: int = 0, *, streamed: bool = False
    ) -> dict[str, Any]:
        """A status object; with ``logs_from`` only the log lines from that index on."""
        payload = self._status_payload(job, with_logs, logs_from)
        if self.profile.sloppy_payloads:
            return sloppy_status(payload, streamed=streamed)
        return payload

    def _status_payload(self, job: EmulatedJob, with_logs: bool, logs_from: int) -> dict[str, Any]:
        payload: dict[str, Any] = {"status": job.state.value, "request_id": job.request_id}
        payload.update(self.urls(job))
        if job.state is JobState.IN_QUEUE:
            payload["queue_position"] = self.queue.position(job)
            return payload
        payload["logs"] = job.logs[logs_from:] if with_logs else None
        if job.state is JobState.COMPLETED:
            payload["metrics"] = job.metrics
            if job.error is not None:
                payload["error"] = job.error
            if job.error_type is not None:
                payload["error_type"] = job.error_type
        return payload


def _request_id() -> str:
    return str(uuid.uuid4())


def _bool(value: bool) -> str:
    return "true" if value else "false"
