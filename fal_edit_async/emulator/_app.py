"""The queue API and the REST storage API: one aiohttp application on the queue origin.

It has one catch-all handler that classifies the request itself, because fal's
paths have variable depth (``owner/alias/sub/path`` on submit, ``[namespace/]owner/alias`` on
the rest) and the router's patterns cannot express "namespace means three segments".

Choices where fal's behaviour is unconfirmed (protocol reference, "Open uncertainties"):

* unknown request id: 404 ``{"detail": "Request not found"}`` on status, stream and result;
  a request id looked up under another app's root is unknown there;
* result before completion: 400 ``{"detail": "Request is still in progress"}`` (and once
  after completion too under the ``result_in_progress`` fault);
* an expired result (``result_ttl``, ``Emulator.expire_result``; fal keeps results about an
  hour, about 6 minutes when 10 KB or more, and does not document what it answers after):
  the request id is forgotten, so status, stream and result answer 404
  ``{"detail": "Request not found"}`` and cancel 404 ``{"status": "NOT_FOUND"}``, exactly as
  for an id never seen;
* a body that is not JSON: 422 at submit (nothing is queued); any JSON is queued and the model
  validates it when it runs, so input errors surface the way fal shows them, as a COMPLETED
  job with an error whose result endpoint answers 422 with a ``detail`` list;
* the SSE stream pushes an event on every state change or new log line, not on queue position
  changes; a job already complete at connect gets one COMPLETED event, then the body ends;
* the start timeout is read from ``X-Fal-Request-Timeout`` (what fal's clients send) or
  ``X-Fal-Request-Start-Timeout`` (as some of fal's pages name it); when both are sent, the
  shorter holds.

The REST origin also serves the webhook JWKS (``/.well-known/jwks.json``, no key needed) and
the request history (``/v1/models/requests/by-endpoint``, see ``_history``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from aiohttp import web

from . import _hostile
from ._engine import Engine
from ._faults import Fault
from ._history import HISTORY_PATH, history_answer
from ._http import BaseApp, drop, json_response, safe_name, server_error
from ._state import EmulatedJob, JobState
from ._stream import StatusStream

__all__ = ["NAMESPACES", "QueueApp", "Route", "build_queue_app", "classify"]

#: First path segments that make the app root three segments long.
NAMESPACES = frozenset({"workflows", "comfy"})
_LEGACY_ID = re.compile(r"^[0-9]+-[A-Za-z0-9-]+$")
_STORAGE_ROUTES = {"/storage/auth/token": "token", "/storage/upload/initiate": "initiate"}
_JWKS_PATH = "/.well-known/jwks.json"


@attrs.frozen(kw_only=True)
class Route:
    """What a queue-origin request is for.

    ``name`` is the fault-injection route (``submit``, ``status``, ``stream``, ``result``,
    ``cancel``, ``storage``); ``action`` refines ``storage`` into ``token`` or ``initiate``.
    """

    name: str
    action: str = ""
    app_root: str = ""
    endpoint_id: str = ""
    request_id: str = ""


def classify(method: str, path: str) -> Route | None:
    """Map a queue-origin request to its :class:`Route`, or None for a 404."""
    if method == "POST" and path in _STORAGE_ROUTES:
        return Route(name="storage", action=_STORAGE_ROUTES[path])
    if method == "GET" and path == _JWKS_PATH:
        return Route(name="jwks")
    if method == "GET" and path == HISTORY_PATH:
        return Route(name="history")
    segments = path.strip("/").split("/")
    if len(segments) == 1 and _LEGACY_ID.match(segments[0]):
        # A legacy ``123-my-app`` id: its root is ``123/my-app``.
        segments = segments[0].split("-", 1)
    root_len = 3 if segments[0] in NAMESPACES else 2
    if len(segments) < root_len or not all(segments[:root_len]):
        return None
    app_root = "/".join(segments[:root_len])
    if method == "POST":
        if not all(segments):
            return None
        return Route(name="submit", app_root=app_root, endpoint_id=path.strip("/"))
    rest = segments[root_len:]
    if len(rest) < 2 or rest[0] != "requests" or not rest[1]:
        return None
    suffix = rest[2:]
    if suffix and suffix[-1] == "":
        suffix = suffix[:-1]  # trailing slash, as the fal CLI sends
    name = _REQUEST_ROUTES.get((method, tuple(suffix)))
    if name is None:
        return None
    return Route(name=name, app_root=app_root, request_id=rest[1])


_REQUEST_ROUTES = {
    ("GET", ()): "result",
    ("GET", ("response",)): "result",
    ("GET", ("status",)): "status",
    ("GET", ("status", "stream")): "stream",
    ("PUT", ("cancel",)): "cancel",
}


def _wants_logs(request: web.Request) -> bool:
    # fal documents 1/0; fal_client sends true/false (httpx renders bools in lowercase).
    return request.query.get("logs", "0").lower() in ("1", "true")


class QueueApp(BaseApp):
    """The queue API and the REST storage API, on one origin.

    Args:
        engine: the job engine.
        accepts: decides whether an Authorization header value is a valid ``Key``.
    """

    def __init__(
        self, engine: Engine, accepts: Callable[[str | None], bool], serves: str = "both"
    ) -> None:
        super().__init__(engine)
        self._accepts = accepts
        self._serves = serves  # "both", "queue" or "rest": which routes this origin answers
        self._handlers: dict[str, _Handler]
        self._handlers = {
            "submit": self._submit,
            "status": self._status,
            "stream": self._stream,
            "result": self._result,
            "cancel": self._cancel,
            "storage": self._storage,
            "history": self._history,
        }

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Classify, authenticate, maybe inject a fault, then answer."""
        route = classify(request.method, request.path)
        if route is not None and self._serves != "both":
            if (route.name == "storage") != (self._serves == "rest"):
                route = None  # not on this origin
        if route is None:
            return json_response(404, {"detail": "Not Found"}, None)
        if route.name == "jwks":  # public keys: no credentials asked
            return json_response(200, self.engine.webhooks.signer.jwks(), None)
        if not self._accepts(request.headers.get("Authorization")):
            self.engine.counters.unauthorized += 1
            detail = "Missing or invalid credentials: send 'Authorization: Key <FAL_KEY>'"
            return json_response(401, {"detail": detail}, None)
        fault = self.engine.plan.http_fault(route.name)
        if fault is not None:
            if fault.kind == "connection_reset" and fault.after_enqueue:
                # The request takes effect, then the answer is lost: the ambiguous failure.
                if route.name == "submit":
                    return await self._submit(request, route, None, hang_up=True)
                if route.name == "cancel":
                    await self._cancel(request, route, None)
                    return drop(request)
            answer = await self.http_fault(fault, request)
            if answer is not None:
                return answer
        hostile = self.engine.plan.hostile(route.name)
        if hostile is not None:
            early = _hostile.early_answer(hostile, request)
            if early is not None:
                return early
        return await self._handlers[route.name](request, route, hostile)

    def _find(self, route: Route) -> EmulatedJob | None:
        """The job a route names, or None: unknown, under another app root, or expired."""
        job = self.engine.jobs.get(route.request_id)
        if job is None or job.app_root != route.app_root or job.expired:
            return None
        return job

    async def _submit(
        self, request: web.Request, route: Route, hostile: Fault | None, *, hang_up: bool = False
    ) -> web.StreamResponse:
        engine = self.engine
        engine.counters.submit_attempts += 1
        try:
            body, timeout = await self._read_submit(request)
        except _Refused as refused:
            return refused.response
        job = engine.submit(
            endpoint_id=route.endpoint_id,
            app_root=route.app_root,
            body=body,
            headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            webhook_url=request.query.get("fal_webhook"),
            timeout=timeout,
        )
        if hang_up:  # the job is queued, but the client never hears about it
            return drop(request)
        late = engine.plan.take("server_error_after_queue")
        if late is not None:  # queued too, but the client hears a 5xx that names the job
            return server_error(late.status or 500, job.request_id)
        if engine.plan.take("gateway_timeout_after_queue") is not None:
            return web.Response(status=504, text="upstream request timeout")
        answer: dict[str, Any] = {"status": "IN_QUEUE", "request_id": job.request_id}
        answer.update(engine.urls(job))
        answer["queue_position"] = engine.queue.position(job)
        if job.webhook_url:
            answer["gateway_request_id"] = job.request_id
        if hostile is not None and hostile.kind == "foreign_urls" and hostile.location:
            answer = _hostile.foreign_urls(answer, hostile.location)
        if hostile is not None and hostile.kind == "other_job_urls":
            earlier = [j for j in engine.jobs.values() if j is not job]
            if earlier:
                answer |= engine.urls(earlier[-1])
        return json_response(200, answer, job.request_id)

    async def _read_submit(self, request: web.Request) -> tuple[Any, float | None]:
        """The body and start timeout of a submit; raises _Refused when it is not accepted."""
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(413, {"detail": "Request body too large"}) from None
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
            detail = [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]
            raise _Refused(422, {"detail": detail}) from None
        try:
            # Both are read; the documented one wins when both are sent.
            start, old = (
                _start_timeout(request.headers.get(name), name)
                for name in ("X-Fal-Request-Start-Timeout", "X-Fal-Request-Timeout")
            )
            timeout = start if start is not None else old
            limit = _queue_limit(request.query.get("fal_max_queue_length"))
        except ValueError as exc:
            raise _Refused(400, {"detail": str(exc)}) from None
        # fal: "reject with 429 if more than N requests are already waiting".
        if limit is not None and len(self.engine.queue) > limit:
            raise _Refused(429, {"detail": f"Queue is full (more than {limit} waiting)"})
        return body, timeout

    async def _status(
        self, request: web.Request, route: Route, hostile: Fault | None
    ) -> web.StreamResponse:
        self.engine.counters.status_polls += 1
        job = self._find(route)
        if job is None:
            if self.engine.profile.unknown_id_completed:
                return json_response(200, _unknown_completed(route), route.request_id)
            return json_response(404, {"detail": "Request not found"}, route.request_id)
        payload = self.engine.status_payload(job, _wants_logs(request))
        code = 200 if job.state is JobState.COMPLETED else 202
        if hostile is not None:
            if hostile.kind == "invalid_json":
                return _raw_json(code, _hostile.INVALID_JSON, job.request_id)
            if hostile.kind == "unknown_status":
                code = 202  # an unknown status is not a completed one
            payload = _hostile.status_payload(payload, hostile.kind)
        return json_response(code, payload, job.request_id)

    async def _result(
        self, request: web.Request, route: Route, hostile: Fault | None
    ) -> web.StreamResponse:
        self.engine.counters.result_fetches += 1
        job = self._find(route)
        if job is None:
            return json_response(404, {"detail": "Request not found"}, route.request_id)
        in_progress = job.state is not JobState.COMPLETED
        # After completion only by the fault: fal's result store may lag its status.
        lagging = None if in_progress else self.engine.plan.take("result_in_progress")
        if lagging is not None and lagging.status == 202:
            body = {"status": "IN_PROGRESS", "request_id": job.request_id}
            return json_response(202, body, job.request_id)
        if in_progress or lagging is not None:
            return json_response(400, {"detail": "Request is still in progress"}, job.request_id)
        if job.result_fetched_at is None:
            job.result_fetched_at = time.monotonic()
        status, body = job.result_status or 200, job.result_body
        if hostile is not None:
            if hostile.kind == "invalid_json":
                return _raw_json(status, _hostile.INVALID_JSON, job.request_id)
            body = _hostile.result_body(body, hostile.kind, status)
        return json_response(status, body, job.request_id, job.result_headers)

    async def _cancel(
        self, request: web.Request, route: Route, hostile: Fault | None
    ) -> web.StreamResponse:
        job = self._find(route)
        if job is None:
            self.engine.counters.cancels += 1
            return json_response(404, {"status": "NOT_FOUND"}, route.request_id)
        outcome = self.engine.cancel(job)
        code = 400 if outcome == "ALREADY_COMPLETED" else 202
        if code == 400 and self.engine.profile.cancel_detail:
            detail = f"Request {job.request_id} cannot be cancelled: it has completed"
            return json_response(400, {"detail": detail}, job.request_id)
        return json_response(code, {"status": outcome}, job.request_id)

    async def _history(
        self, request: web.Request, route: Route, hostile: Fault | None
    ) -> web.StreamResponse:
        self.engine.counters.history_queries += 1
        status, body = history_answer(self.engine.history, request, hostile)
        return json_response(status, body, None)

    async def _storage(
        self, request: web.Request, route: Route, hostile: Fault | None
    ) -> web.StreamResponse:
        engine = self.engine
        if route.action == "token":
            engine.counters.token_requests += 1
            return json_response(200, engine.store.issue_token(), None)
        engine.counters.upload_initiates += 1
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            detail = [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]
            return json_response(422, {"detail": detail}, None)
        name = safe_name(str(body.get("file_name") or "upload.bin"))
        content_type = str(body.get("content_type") or "application/octet-stream")
        return json_response(200, engine.store.initiate(name, content_type), None)

    async def _stream(
        self, request: web.Request, route: Route, hostile: Fault | None
    ) -> web.StreamResponse:
        job = self._find(route)
        if job is None:
            if self.engine.profile.unknown_id_completed:
                return await _one_event(request, _unknown_completed(route))
            return json_response(404, {"detail": "Request not found"}, route.request_id)
        refused = self.engine.plan.take("refuse_stream")
        if refused is not None:
            status = refused.status or 405
            detail = "Not Found" if status == 404 else "Streaming is not available"
            return json_response(status, {"detail": detail}, job.request_id)
        framing = _hostile.SseFraming(hostile.kind if hostile else None)
        return await StatusStream(self.engine, job, _wants_logs(request), framing).serve(request)


#: A queue route's handler; ``hostile`` is the hostile behaviour scheduled for this request.
_Handler = Callable[[web.Request, Route, Fault | None], Awaitable[web.StreamResponse]]


def _unknown_completed(route: Route) -> dict[str, Any]:
    """fal's status for a request id it does not know (seen live): COMPLETED, no error."""
    return {"status": "COMPLETED", "request_id": route.request_id, "logs": None, "metrics": {}}


async def _one_event(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
    """A status stream of one event, then the end of the body."""
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
    await response.write_eof()
    return response


def _raw_json(status: int, body: bytes, request_id: str) -> web.Response:
    """An answer labelled JSON whose body may not be."""
    headers = {"x-fal-request-id": request_id}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class _Refused(Exception):
    """A submit refused before anything was queued; carries the answer to send."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.response = json_response(status, body, None)


def _start_timeout(value: str | None, name: str = "X-Fal-Request-Timeout") -> float | None:
    """A start-timeout header in seconds (``"30"`` or ``"30.0"``).

    Raises:
        ValueError: the header is not a positive number.
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # also refuses nan
        raise ValueError(f"{name} must be a positive number of seconds")
    return seconds


def _queue_limit(value: str | None) -> int | None:
    """The ``fal_max_queue_length`` query parameter.

    Raises:
        ValueError: it is not a non-negative integer.
    """
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError("fal_max_queue_length must be a non-negative integer")
    return int(value)


def build_queue_app(
    engine: Engine, accepts: Callable[[str | None], bool], max_body: int, serves: str = "both"
) -> web.Application:
    """The queue + REST application; ``serves`` ``"queue"`` or ``"rest"`` for one of them."""
    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", QueueApp(engine, accepts, serves).handle)
    return app
