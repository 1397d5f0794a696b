"""Fault injection: random faults at configured rates, and exact schedules for tests.

:class:`Faults` is the frozen configuration (rates 0..1 drawn from one seeded RNG);
:class:`FaultPlan` is the live object that decides, per request, whether to misbehave. A
scheduled fault (``Emulator.schedule_fault``) always wins over a random one, so a test can say
"the next submit gets an ingress error" and know it will.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = [
    "ERROR_TYPES",
    "FAULT_KINDS",
    "HOSTILE_KINDS",
    "QUEUE_ROUTES",
    "ROUTES",
    "Fault",
    "FaultPlan",
    "Faults",
]

#: The queue API routes; HTTP-level faults apply to these unless ``Faults.routes`` says else.
QUEUE_ROUTES = frozenset({"submit", "status", "stream", "result", "cancel"})
#: Every route name: the queue routes, ``storage`` (CDN token, upload initiate), ``upload``
#: (bytes sent to the CDN), ``download`` (CDN file GETs), ``job`` (the model run itself),
#: ``history`` (the request-history endpoint) and ``webhook`` (deliveries the emulator sends).
ROUTES = QUEUE_ROUTES | {"storage", "upload", "download", "job", "history", "webhook"}

#: Faults that replace or delay an HTTP answer, in the order random draws are made.
HTTP_KINDS = ("connection_reset", "ingress_error", "rate_limit", "server_error", "slow_response")
#: Faults that only make sense on one route.
ROUTE_KINDS = {
    "stream_drop": "stream",
    "refuse_stream": "stream",
    "truncated_download": "download",
    "model_failure": "job",
    # The job is queued for real (it runs and bills), then the submit answers a 5xx.
    "server_error_after_queue": "submit",
    # Queued too, then a load balancer's bare 504: no request id, no nginx page.
    "gateway_timeout_after_queue": "submit",
    # A completed job's result answers 400 "Request is still in progress" (lagging store).
    "result_in_progress": "result",
    # Webhook deliveries: the genuine one twice; a copy altered after signing first; a
    # genuine one signed 400 s ago (a replay) first.
    "webhook_duplicate": "webhook",
    "webhook_tampered": "webhook",
    "webhook_stale": "webhook",
}
#: A hostile server: answers that are well-formed HTTP but test the client's defences. Each
#: is only ever scheduled (``Emulator.schedule_fault``), never drawn at random, and applies
#: to the routes listed.
HOSTILE_KINDS: dict[str, frozenset[str]] = {
    # 302 to ``location`` (another origin, typically), instead of the answer.
    "redirect": frozenset({"submit", "status", "stream", "result", "cancel", "download"}),
    # One of fal's request errors instead of the answer (``error_type``: its status, flat
    # body and ``X-Fal-Error-Type``), or with no ``error_type`` a bare ``status`` (default
    # 499, nginx's "client closed request") with an empty body: what a proxy in between
    # answers, which says nothing about the job.
    "request_error": QUEUE_ROUTES,
    # The account cannot pay: 402, or 403 "User is locked. Reason: Exhausted balance".
    "payment_required": QUEUE_ROUTES,
    "user_locked": QUEUE_ROUTES,
    # A 401 whose body quotes the Authorization header it received.
    "echo_key": QUEUE_ROUTES | {"storage"},
    # The submit answer's URLs all point at ``location`` instead of the queue origin.
    "foreign_urls": frozenset({"submit"}),
    # The submit answer's URLs (on the queue origin) name the job submitted before this one.
    "other_job_urls": frozenset({"submit"}),
    # A 2xx body (or the first event) that is not JSON.
    "invalid_json": frozenset({"status", "stream", "result"}),
    # A status value no client knows, once (the next answer or event is the real one).
    "unknown_status": frozenset({"status", "stream"}),
    # Extra fields in the status, its log lines, the result and its images.
    "unknown_fields": frozenset({"status", "stream", "result"}),
    # Status stream framing: bytes in 1-3 byte pieces; CRLF line endings; comments,
    # ``event:``, ``id:``, ``retry:``, unknown fields and data split over several lines;
    # ``sse_hostile`` is all three at once.
    "sse_split": frozenset({"stream"}),
    "sse_crlf": frozenset({"stream"}),
    "sse_noise": frozenset({"stream"}),
    "sse_hostile": frozenset({"stream"}),
    # A successful result with no images, or three times as many as asked for.
    "zero_images": frozenset({"result"}),
    "extra_images": frozenset({"result"}),
    # ``file_name`` values with ``../``, absolute paths, backslashes and NUL bytes.
    "hostile_names": frozenset({"result"}),
    # The file served as ``text/html``.
    "wrong_content_type": frozenset({"download"}),
    # The file followed by 1 MiB of junk, chunked (no Content-Length).
    "oversized": frozenset({"download"}),
    # History pages that lie: ``next_cursor`` repeats the cursor used; ``has_more`` without
    # a cursor; payloads ``null``; an item of another endpoint, outside the window.
    "history_loop": frozenset({"history"}),
    "history_no_cursor": frozenset({"history"}),
    "history_no_payloads": frozenset({"history"}),
    "history_foreign": frozenset({"history"}),
}
FAULT_KINDS = frozenset(HTTP_KINDS) | frozenset(ROUTE_KINDS) | frozenset(HOSTILE_KINDS)
_ALIASES = {"truncated": "truncated_download", "reset": "connection_reset"}

#: fal's request error types: HTTP status, ``detail`` text, and whether a retry may help.
ERROR_TYPES: dict[str, tuple[int, str, bool]] = {
    "request_timeout": (504, "Request timed out", False),
    "startup_timeout": (504, "Runner startup timed out", True),
    "runner_scheduling_failure": (503, "Could not schedule a runner", True),
    "runner_connection_timeout": (503, "Connection to the runner timed out", True),
    "runner_disconnected": (503, "Runner disconnected", True),
    "runner_connection_refused": (503, "Runner refused the connection", True),
    "runner_connection_error": (503, "Runner connection error", True),
    "runner_incomplete_response": (502, "Runner sent an incomplete response", True),
    "runner_server_error": (500, "Runner server error", False),
    "internal_error": (500, "Internal server error", True),
    "client_disconnected": (499, "Client disconnected", False),
    "client_cancelled": (499, "Request cancelled by the client", False),
    "bad_request": (400, "Bad request", False),
}
#: ``model_failure_kind`` values besides the error types: a 422 with a ``detail`` list.
MODEL_FAILURE_KINDS = frozenset(ERROR_TYPES) | {"validation"}


def _rate(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Faults.{attribute.name} must be a rate from 0 to 1, got {value!r}")


def _routes(value: Iterable[str]) -> frozenset[str]:
    routes = frozenset(value)
    if not routes <= ROUTES:
        raise ValueError(f"unknown routes {sorted(routes - ROUTES)}; known: {sorted(ROUTES)}")
    return routes


def _routes_by_kind(value: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    unknown = set(value) - set(HTTP_KINDS)
    if unknown:
        raise ValueError(f"routes_by_kind: unknown HTTP fault kinds {sorted(unknown)}")
    return {kind: _routes(routes) for kind, routes in value.items()}


def _status_in(*allowed: int) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value not in allowed:
            raise ValueError(f"Faults.{attribute.name} must be one of {allowed}, got {value!r}")

    return check


def _model_kind(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in MODEL_FAILURE_KINDS:
        raise ValueError(
            f"Faults.model_failure_kind must be 'validation' or one of the "
            f"error types {sorted(ERROR_TYPES)}, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class Faults:
    """How often the emulator misbehaves: each field a rate from 0 to 1, drawn per request.

    Rates apply per request on the routes in ``routes`` (the five queue routes by default)
    for the HTTP-level faults, or on ``routes_by_kind[kind]`` for a kind listed there (so a
    chaos run can send gateway 502s to submits and fal's own 500s elsewhere);
    ``stream_drop`` and ``refuse_stream`` apply to status streams, ``truncated_download`` to
    CDN downloads, ``model_failure`` to each job run, ``server_error_after_queue`` to each
    submit that was queued and ``result_in_progress`` to each result GET of a completed
    job. The same ``seed`` gives the same sequence of draws.

    Usage::

        Faults(seed=1, rate_limit=0.05, server_error=0.01, routes={"submit", "status"})
        Faults(server_error=0.1, ingress_error=0.1, routes_by_kind={
            "server_error": {"status", "result"}, "ingress_error": {"submit"}})
    """

    seed: int | None = 0
    routes: frozenset[str] = attrs.field(default=QUEUE_ROUTES, converter=_routes)
    #: Routes for one HTTP-level kind, replacing ``routes`` for that kind only.
    routes_by_kind: Mapping[str, frozenset[str]] = attrs.field(
        factory=dict, converter=_routes_by_kind, hash=False
    )
    #: 429 with ``Retry-After: retry_after`` (whole seconds are sent as an integer).
    rate_limit: float = attrs.field(default=0.0, validator=_rate)
    retry_after: float = 1.0
    #: A 5xx from fal itself, with ``x-fal-request-id`` (not retried by fal_client).
    server_error: float = attrs.field(default=0.0, validator=_rate)
    server_error_status: int = attrs.field(default=500, validator=_status_in(500, 502, 503, 504))
    #: A 502/503/504 nginx page without ``x-fal-request-id`` (retried by fal_client).
    ingress_error: float = attrs.field(default=0.0, validator=_rate)
    ingress_status: int = attrs.field(default=502, validator=_status_in(502, 503, 504))
    #: The connection is dropped without an answer. ``reset_after_enqueue`` decides whether
    #: the request took effect first: on submit the job is queued (and runs and bills like
    #: any other), on cancel the cancel is carried out; elsewhere it changes nothing.
    connection_reset: float = attrs.field(default=0.0, validator=_rate)
    reset_after_enqueue: bool = False
    #: A submit is queued for real, then answered ``server_error_status`` (a fal 5xx JSON
    #: body) with ``x-fal-request-id`` naming the queued job. The job runs and bills like any
    #: other, so a client that resubmits on this answer pays twice.
    server_error_after_queue: float = attrs.field(default=0.0, validator=_rate)
    #: A submit is queued for real, then answered 504 ``upstream request timeout`` in plain
    #: text, without ``x-fal-request-id``: a load balancer gave up after the queue stored the
    #: POST. Nothing in it tells this from an ingress error but the missing nginx page.
    gateway_timeout_after_queue: float = attrs.field(default=0.0, validator=_rate)
    #: A result GET of a job that has COMPLETED still answers 400 ``{"detail": "Request is
    #: still in progress"}``, as fal's eventually consistent result store can just after
    #: completion; the next GET gets the result. Only GETs of completed jobs draw or take it.
    #: Scheduled with ``status=202``, the answer is 202 ``{"status": "IN_PROGRESS"}``.
    result_in_progress: float = attrs.field(default=0.0, validator=_rate)
    #: The answer waits ``slow_delay`` seconds, or until ``Emulator.release_slow()``.
    slow_response: float = attrs.field(default=0.0, validator=_rate)
    slow_delay: float = 1.0
    #: The status stream ends cleanly after its first event, before COMPLETED.
    stream_drop: float = attrs.field(default=0.0, validator=_rate)
    #: The status stream is answered with ``refuse_stream_status`` (clients should poll).
    refuse_stream: float = attrs.field(default=0.0, validator=_rate)
    refuse_stream_status: int = attrs.field(default=405, validator=_status_in(404, 405, 501))
    #: The download announces its full Content-Length, sends half, then closes.
    truncated_download: float = attrs.field(default=0.0, validator=_rate)
    #: The job completes with an error: ``validation`` (422 with a detail list) or an
    #: error type from ``ERROR_TYPES`` such as ``runner_disconnected`` (503).
    model_failure: float = attrs.field(default=0.0, validator=_rate)
    model_failure_kind: str = attrs.field(default="validation", validator=_model_kind)
    #: A webhook's genuine delivery is POSTed twice (fal retries, so receivers see repeats).
    webhook_duplicate: float = attrs.field(default=0.0, validator=_rate)
    #: Before the genuine delivery, a copy whose body was changed after signing.
    webhook_tampered: float = attrs.field(default=0.0, validator=_rate)
    #: Before the genuine delivery, a genuine one signed 400 s ago (a replay).
    webhook_stale: float = attrs.field(default=0.0, validator=_rate)


@attrs.frozen(kw_only=True)
class Fault:
    """One fault to inject now, with its parameters resolved."""

    kind: str
    status: int | None = None
    retry_after: float | None = None
    after_enqueue: bool = False
    delay: float | None = None
    error_type: str | None = None
    location: str | None = None


@attrs.define
class _Scheduled:
    kind: str
    remaining: int
    options: dict[str, Any]


def normalize_kind(route: str, kind: str) -> str:
    """Check a (route, kind) pair for ``schedule_fault`` and return the canonical kind."""
    kind = _ALIASES.get(kind, kind)
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; known: {sorted(ROUTES)}")
    if kind in ROUTE_KINDS:
        if ROUTE_KINDS[kind] != route:
            raise ValueError(f"fault {kind!r} applies to route {ROUTE_KINDS[kind]!r} only")
    elif kind in HOSTILE_KINDS:
        if route not in HOSTILE_KINDS[kind]:
            raise ValueError(f"fault {kind!r} applies to routes {sorted(HOSTILE_KINDS[kind])}")
    elif kind not in HTTP_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
    elif route == "job":
        raise ValueError("the job route only takes 'model_failure'")
    return kind


class FaultPlan:
    """Decides which fault, if any, each request gets; counts what it injects.

    Args:
        faults: the configured rates.
        injected: the counter to add each injected fault's kind to.
    """

    def __init__(self, faults: Faults, injected: Counter[str]) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._injected = injected
        # Per route, in the order they were scheduled: the head applies to the next request.
        self._scheduled: dict[str, deque[_Scheduled]] = {}

    def schedule(self, route: str, kind: str, times: int, options: dict[str, Any]) -> None:
        """Inject ``kind`` on the next ``times`` requests of ``route`` (before random ones)."""
        kind = normalize_kind(route, kind)
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        if kind in ("redirect", "foreign_urls") and not options.get("location"):
            raise ValueError(f"fault {kind!r} needs a location (an http(s) URL)")
        error_type = options.get("error_type")
        if error_type is not None and error_type not in MODEL_FAILURE_KINDS:
            raise ValueError(
                f"unknown error_type {error_type!r}; known: validation and {sorted(ERROR_TYPES)}"
            )
        self._scheduled.setdefault(route, deque()).append(_Scheduled(kind, times, options))

    def clear(self) -> None:
        """Forget every scheduled fault (random rates stay)."""
        self._scheduled.clear()

    def http_fault(self, route: str) -> Fault | None:
        """The HTTP-level fault for this request of ``route``, if any."""
        scheduled = self._take_scheduled(route, HTTP_KINDS)
        if scheduled is not None:
            return self._inject(*scheduled)
        by_kind = self.faults.routes_by_kind
        for kind in HTTP_KINDS:
            if route not in by_kind.get(kind, self.faults.routes):
                continue
            if self._draw(getattr(self.faults, kind)):
                return self._inject(kind, {})
        return None

    def hostile(self, route: str) -> Fault | None:
        """The hostile behaviour scheduled for this request of ``route``, if any."""
        kinds = tuple(k for k, routes in HOSTILE_KINDS.items() if route in routes)
        scheduled = self._take_scheduled(route, kinds)
        return None if scheduled is None else self._inject(*scheduled)

    def take(self, kind: str) -> Fault | None:
        """The route-specific fault ``kind`` for this request, if scheduled or drawn."""
        scheduled = self._take_scheduled(ROUTE_KINDS[kind], (kind,))
        if scheduled is not None:
            return self._inject(*scheduled)
        if self._draw(getattr(self.faults, kind)):
            return self._inject(kind, {})
        return None

    def _take_scheduled(
        self, route: str, kinds: tuple[str, ...]
    ) -> tuple[str, dict[str, Any]] | None:
        queue = self._scheduled.get(route)
        if not queue or queue[0].kind not in kinds:
            return None
        head = queue[0]
        head.remaining -= 1
        if head.remaining == 0:
            queue.popleft()
        return head.kind, head.options

    def _draw(self, rate: float) -> bool:
        # No draw at rate 0, so enabling one fault does not reshuffle another's sequence
        # when only that fault is configured.
        return rate > 0.0 and self._rng.random() < rate

    def _inject(self, kind: str, options: dict[str, Any]) -> Fault:
        self._injected[kind] += 1
        f = self.faults
        defaults: dict[str, dict[str, Any]] = {
            "rate_limit": {"status": 429, "retry_after": f.retry_after},
            "server_error": {"status": f.server_error_status},
            "server_error_after_queue": {"status": f.server_error_status},
            "ingress_error": {"status": f.ingress_status},
            "connection_reset": {"after_enqueue": f.reset_after_enqueue},
            "slow_response": {"delay": f.slow_delay},
            "refuse_stream": {"status": f.refuse_stream_status},
            "model_failure": {"error_type": f.model_failure_kind},
        }
        values = {**defaults.get(kind, {}), **options}
        return Fault(kind=kind, **values)
