"""What the queue and CDN applications share: JSON answers, dropped connections, request
logging, and the answers of HTTP-level faults.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from ._engine import Engine
from ._faults import Fault

__all__ = ["BaseApp", "abort", "drop", "json_response", "safe_name", "server_error"]

_NGINX_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
_DROPPED = 0  # the request-log status of a connection dropped on purpose


def json_response(
    status: int, body: Any, request_id: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer with fal's ``x-fal-request-id`` header (a fresh id when none applies)."""
    all_headers = {"x-fal-request-id": request_id or _fresh_id()}
    if headers:
        all_headers.update(headers)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=all_headers,
    )


def server_error(status: int, request_id: str | None) -> web.Response:
    """fal's own 5xx: a JSON ``internal_error`` with ``x-fal-request-id`` (fresh when None)."""
    body = {"detail": "Internal Server Error", "error_type": "internal_error"}
    return json_response(status, body, request_id, {"X-Fal-Error-Type": "internal_error"})


def _fresh_id() -> str:
    return str(uuid.uuid4())


def abort(request: web.Request) -> None:
    """Drop the connection at once: no answer, or no rest of the answer."""
    if request.transport is not None:
        request.transport.abort()


def drop(request: web.Request) -> web.StreamResponse:
    """Drop the connection without an answer.

    aiohttp still wants a response object; writing it to the aborted transport is a no-op,
    and the request log records status 0.
    """
    abort(request)
    return web.Response(status=500)


def _log_request(engine: Engine, request: web.Request, started: float, status: int) -> None:
    counters = engine.counters
    counters.requests_total += 1
    counters.request_log.append((started, request.method, request.path, status))
    engine.notify()


class BaseApp:
    """What both applications share: request logging and HTTP-level fault answers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The catch-all handler: dispatch, then log the request."""
        started = time.monotonic()
        status = _DROPPED
        try:
            response = await self.dispatch(request)
            dropped = request.transport is None or request.transport.is_closing()
            status = _DROPPED if dropped else response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            _log_request(self.engine, request, started, status)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Answer one request (subclasses)."""
        raise NotImplementedError

    async def http_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        """Answer with ``fault``; None when the request should go on (after a slow wait)."""
        if fault.kind == "slow_response":
            await self._slow(fault.delay or 0.0)
            return None
        if fault.kind == "connection_reset":
            await request.read()  # the client has sent everything: the failure is ambiguous
            return drop(request)
        status = fault.status or 500
        if fault.kind == "ingress_error":
            page = _NGINX_PAGE.format(status=status, reason=_REASONS[status])
            # No x-fal-request-id: this answer comes from the ingress, not from fal.
            return web.Response(status=status, text=page, content_type="text/html")
        if fault.kind == "rate_limit":
            headers = {"X-Fal-Needs-Retry": "1"}  # fal's own hint, sent with every 429
            if self.engine.profile.rate_limit_retry_after:
                headers["Retry-After"] = _seconds(fault.retry_after or 0.0)
            return json_response(429, {"detail": "Rate limit exceeded"}, None, headers)
        return server_error(status, None)

    async def _slow(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await self.engine.slow_gate.passage()
        except TimeoutError:
            pass


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def safe_name(name: str) -> str:
    """A file name without directories, safe to put in a URL path segment."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base or "upload.bin"
