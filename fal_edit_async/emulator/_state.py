"""The emulator's in-memory records: jobs, counters, and the queue index.

Nothing here touches the network or the clock beyond ``time.monotonic()`` timestamps, which are
recorded for tests to read and never decide an outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter, deque
from enum import StrEnum
from typing import Any

import attrs

__all__ = ["Counters", "EmulatedJob", "JobQueue", "JobState", "input_key"]


class JobState(StrEnum):
    """The three queue states fal reports; a failed or cancelled job is ``COMPLETED``."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


#: How far along each state is, so "reached IN_PROGRESS" also holds once COMPLETED.
STATE_RANK = {JobState.IN_QUEUE: 0, JobState.IN_PROGRESS: 1, JobState.COMPLETED: 2}


def input_key(body: Any) -> str:
    """A stable hash of a JSON body: the key of :attr:`Counters.submits_by_input`.

    Args:
        body: the decoded JSON input of a submit.

    Returns:
        16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no spaces).
    """
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.define(kw_only=True, eq=False)
class EmulatedJob:
    """One submitted request as the emulator tracks it; read it, don't change it.

    Timestamps come from ``time.monotonic()``. ``ran`` is true once a worker started the job,
    so a job cancelled while queued has ``cancelled=True`` and ``ran=False`` for ever.
    ``result_status``, ``result_body`` and ``result_headers`` are what the result endpoint
    answers once the job is ``COMPLETED``. ``billed`` is true once the job completed with
    output (see :class:`Counters` for the billing rule). ``cancel_ignored`` is true when a
    cancel reached the job while it ran and was answered 202 but ignored (see
    ``Emulator(cancel_running=...)``): the job ran on and ``cancelled`` stays false.
    ``expires_at`` is when the result will be forgotten (``Emulator(result_ttl=...)``, None
    for never) and ``expired`` is true once it was: from then on the queue API answers for
    this request id as for one it never saw (the record stays here for tests).
    """

    request_id: str
    endpoint_id: str
    app_root: str
    input: Any
    input_hash: str
    priority: str | None = None
    hint: str | None = None
    timeout: float | None = None
    webhook_url: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    state: JobState = JobState.IN_QUEUE
    ran: bool = False
    cancelled: bool = False
    cancel_ignored: bool = False
    submitted_at: float = attrs.field(factory=time.monotonic)
    started_at: float | None = None
    completed_at: float | None = None
    result_fetched_at: float | None = None
    logs: list[dict[str, Any]] = attrs.field(factory=list)
    error: str | None = None
    error_type: str | None = None
    result_status: int | None = None
    result_body: Any = None
    result_headers: dict[str, str] = attrs.field(factory=dict)
    output_urls: list[str] = attrs.field(factory=list)
    billed: bool = False
    expires_at: float | None = None
    expired: bool = False
    streams_opened: int = 0
    open_streams: int = 0
    webhook_status: int | None = None

    # Internal: queue slot, the running task, and the event status streams wait on.
    seq: int = attrs.field(default=0, init=False, repr=False)
    task: asyncio.Task[None] | None = attrs.field(default=None, init=False, repr=False)
    timeout_handle: asyncio.TimerHandle | None = attrs.field(default=None, init=False, repr=False)
    expiry_handle: asyncio.TimerHandle | None = attrs.field(default=None, init=False, repr=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False, repr=False)

    @property
    def failed(self) -> bool:
        """True when the job completed with an error (including a cancellation)."""
        return self.error is not None or self.error_type is not None

    @property
    def metrics(self) -> dict[str, float]:
        """The ``metrics`` object of a COMPLETED status: the time spent running."""
        if self.started_at is None or self.completed_at is None:
            return {}
        return {"inference_time": round(self.completed_at - self.started_at, 6)}

    def changed_event(self) -> asyncio.Event:
        """The event the next change sets; grab it before reading the state, then wait."""
        return self._changed

    def touch(self) -> None:
        """Wake everything waiting for this job to change (status streams)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()


@attrs.define(kw_only=True, eq=False)
class Counters:
    """Live counters of what the emulator saw; tests and benchmarks read them.

    Every field is an int unless noted. ``cancels`` counts every cancel request,
    ``cancels_ignored`` those answered 202 that a running job ignored; ``streams_with_logs``
    the status streams opened with ``?logs=1``; ``results_expired``
    counts results forgotten (``result_ttl`` or ``Emulator.expire_result``). ``request_log``
    holds one ``(monotonic time, method, path, status)`` tuple per request (status 0 when the
    connection was dropped on purpose). ``in_flight_by_second`` maps whole seconds since start
    to the highest number of jobs IN_PROGRESS seen during that second.

    Billing: ``billed`` counts the jobs fal would charge for, and ``billed_by_input`` the
    same per input (keyed by :func:`input_key`, like ``submits_by_input``). A job is billed
    when, and only when, it completes successfully with output (a 200 result), whether or
    not anyone fetches that result, and also when it ran on to such a completion after a
    cancel it ignored (``Emulator(cancel_running=...)``). Nothing else is billed:
    a job cancelled while queued or while running (``client_cancelled``), a model refusal
    or input error (422), fal's request errors such as ``runner_disconnected``,
    ``request_timeout`` or ``internal_error`` (fal: "no charge for server errors"), and
    submits refused before queuing. So ``max(billed_by_input.values(), default=0) <= 1``
    says no input was paid for twice.
    """

    submit_attempts: int = 0
    submits: int = 0
    submits_by_input: Counter[str] = attrs.field(factory=Counter)
    status_polls: int = 0
    streams_opened: int = 0
    streams_with_logs: int = 0
    result_fetches: int = 0
    cancels: int = 0
    cancels_ignored: int = 0
    completed: int = 0
    results_expired: int = 0
    billed: int = 0
    billed_by_input: Counter[str] = attrs.field(factory=Counter)
    downloads: int = 0
    token_requests: int = 0
    upload_initiates: int = 0
    upload_puts: int = 0
    cdn_uploads: int = 0
    cdn_auth_requests: int = 0
    webhooks_sent: int = 0
    webhook_failures: int = 0
    #: Webhooks whose every delivery failed (retries exhausted).
    webhooks_abandoned: int = 0
    #: Webhook POSTs by kind: ``genuine``, ``duplicate``, ``tampered``, ``stale``.
    webhook_posts: Counter[str] = attrs.field(factory=Counter)
    history_queries: int = 0
    faults_injected: Counter[str] = attrs.field(factory=Counter)
    requests_total: int = 0
    unauthorized: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    in_flight_by_second: dict[int, int] = attrs.field(factory=dict)
    downloads_in_flight: int = 0
    peak_downloads: int = 0
    request_log: list[tuple[float, str, str, int]] = attrs.field(factory=list)
    started_at: float = attrs.field(factory=time.monotonic, repr=False)

    def job_started(self) -> None:
        """Count one more job IN_PROGRESS and update the peaks."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self._note_second()

    def job_stopped(self) -> None:
        """Count one job fewer IN_PROGRESS."""
        self.in_flight -= 1
        self._note_second()

    def _note_second(self) -> None:
        second = int(time.monotonic() - self.started_at)
        if self.in_flight_by_second.get(second, -1) < self.in_flight:
            self.in_flight_by_second[second] = self.in_flight

    def download_started(self) -> None:
        """Count one more concurrent CDN download and update the peak."""
        self.downloads_in_flight += 1
        self.peak_downloads = max(self.peak_downloads, self.downloads_in_flight)


class JobQueue:
    """FIFO of queued jobs with O(log n) queue positions, even with removals in the middle.

    A Fenwick tree over submit order holds 1 for each job still queued, so a job's position
    (how many queued jobs are ahead of it) is a prefix sum. Status polls ask for positions
    constantly, so a scan of the queue per poll would make 10,000 queued jobs quadratic.
    """

    def __init__(self) -> None:
        self._tree: list[int] = [0]  # 1-based
        self._fifo: deque[EmulatedJob] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, job: EmulatedJob) -> None:
        """Append a job; it gets the next sequence number."""
        index = len(self._tree)
        low = index & -index
        # The new node covers (index - low, index]: the queued jobs in that range plus this one.
        self._tree.append(self._prefix(index - 1) - self._prefix(index - low) + 1)
        job.seq = index
        self._fifo.append(job)
        self._size += 1

    def pop(self) -> EmulatedJob | None:
        """Take the oldest job still queued, or None."""
        while self._fifo:
            job = self._fifo.popleft()
            if job.state is JobState.IN_QUEUE:
                self._clear(job.seq)
                return job
        return None

    def remove(self, job: EmulatedJob) -> None:
        """Take a job out of the queue (cancelled or expired); the deque skips it later."""
        self._clear(job.seq)

    def position(self, job: EmulatedJob) -> int:
        """How many queued jobs are ahead of ``job`` (0-based)."""
        return self._prefix(job.seq - 1)

    def _clear(self, index: int) -> None:
        self._size -= 1
        while index < len(self._tree):
            self._tree[index] -= 1
            index += index & -index

    def _prefix(self, index: int) -> int:
        total = 0
        while index > 0:
            total += self._tree[index]
            index -= index & -index
        return total
