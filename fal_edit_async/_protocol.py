"""The fal queue API as pure functions: URLs, headers, and answers turned into models or errors.

Nothing here awaits, so all of it is tested without an event loop or a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._endpoint import EndpointId
from ._exceptions import (
    APIError,
    AuthError,
    InputError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ValidationError,
    describe_detail,
)
from ._models import CancelOutcome, SubmitReceipt
from ._retry import parse_retry_after

__all__ = [
    "PRIORITIES",
    "JobUrls",
    "api_error",
    "cancel_outcome",
    "decode_json",
    "origin",
    "same_origin",
    "submit_headers",
]

#: The queue priorities fal-client accepts.
PRIORITIES = ("normal", "low")


def origin(url: str) -> tuple[str, str]:
    """Scheme and host:port of a URL, lower-cased: what decides where the key may go."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme.lower(), f"{(parts.hostname or '').lower()}:{port}"


def same_origin(url: str, base_url: str) -> bool:
    """True when ``url`` is on ``base_url``'s origin; a URL under the base needs no parsing
    (this runs for every request, so the common case stays a string comparison)."""
    return url.startswith(base_url.rstrip("/") + "/") or origin(url) == origin(base_url)


@attrs.frozen(kw_only=True)
class JobUrls:
    """Where one job's status, stream, result and cancel live."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    @property
    def stream_url(self) -> str:
        """The server-sent events status stream."""
        return self.status_url.rstrip("/") + "/stream"

    @classmethod
    def build(cls, queue_url: str, endpoint: EndpointId, request_id: str) -> JobUrls:
        """The URLs for re-attaching by request id: app root only, sub-path dropped."""
        if not request_id or "/" in request_id or request_id in (".", ".."):
            raise InputError("request_id", request_id, "a fal request id")
        base = f"{queue_url.rstrip('/')}/{endpoint.app_root}/requests/{request_id}"
        return cls(
            request_id=request_id,
            status_url=f"{base}/status",
            response_url=base,
            cancel_url=f"{base}/cancel",
        )

    @classmethod
    def from_receipt(cls, queue_url: str, endpoint: EndpointId, receipt: SubmitReceipt) -> JobUrls:
        """The server's own URLs, unless any points off the queue origin.

        The key is sent to those URLs, so a receipt that names another host is not trusted:
        the URLs are built locally instead, as @fal-ai/client always does.
        """
        urls = (receipt.status_url, receipt.response_url, receipt.cancel_url)
        if all(same_origin(u, queue_url) for u in urls):
            return cls(
                request_id=receipt.request_id,
                status_url=receipt.status_url,
                response_url=receipt.response_url,
                cancel_url=receipt.cancel_url,
            )
        return cls.build(queue_url, endpoint, receipt.request_id)


def submit_headers(
    *,
    priority: str | None = None,
    hint: str | None = None,
    start_timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The optional submit headers, validated as fal-client validates them."""
    out = {str(k): str(v) for k, v in (headers or {}).items()}
    if any(k.lower() == "authorization" for k in out):
        raise InputError("headers", "Authorization", "no Authorization header (set api_key)")
    if priority is not None:
        if priority not in PRIORITIES:
            raise InputError("priority", priority, " | ".join(PRIORITIES))
        out["X-Fal-Queue-Priority"] = priority
    if hint is not None:
        if not isinstance(hint, str) or not hint or "\n" in hint:
            raise InputError("hint", hint, "a non-empty string on one line")
        out["X-Fal-Runner-Hint"] = hint
    if start_timeout is not None:
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, int | float):
            raise InputError("start_timeout", start_timeout, "a number of seconds above 1")
        if start_timeout <= 1:
            raise InputError("start_timeout", start_timeout, "a number of seconds above 1")
        out["X-Fal-Request-Timeout"] = str(float(start_timeout))
    return out


def decode_json(body: bytes | str, *, what: str) -> Any:
    """Parse a JSON body, or raise ProtocolError naming what it was for."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what}: body is not JSON", details=[str(exc)]) from exc


def _message(body: Any, status: int) -> str:
    if isinstance(body, Mapping):
        if "detail" in body:
            return describe_detail(body)
        if "message" in body:
            return str(body["message"])
        if "status" in body:
            return str(body["status"])
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return f"HTTP {status}"


def api_error(status: int, headers: Mapping[str, str], body: bytes) -> APIError:
    """The typed error for a non-2xx answer."""
    try:
        parsed: Any = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        parsed = body.decode("utf-8", errors="replace")
    request_id = headers.get("x-fal-request-id") or None
    error_type = headers.get("x-fal-error-type")
    if isinstance(parsed, Mapping) and isinstance(parsed.get("error_type"), str):
        error_type = parsed["error_type"]
    kw: dict[str, Any] = {
        "status": status,
        "body": parsed,
        "request_id": request_id,
        "error_type": error_type,
        "timeout_type": headers.get("x-fal-request-timeout-type"),
    }
    message = _message(parsed, status)
    if 300 <= status < 400:
        # API calls never follow redirects: the key would travel to wherever they point.
        where = headers.get("location") or headers.get("Location") or "nowhere"
        message = f"redirect to {where} not followed; the key goes only to the configured hosts"
    if status in (401, 403):
        return AuthError(f"{message}. Set FAL_KEY to a valid fal API key", **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    if status == 422:
        return ValidationError(message, **kw)
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitError(message, retry_after=retry_after, **kw)
    if status >= 500:
        return ServerError(message, **kw)
    return APIError(message, **kw)


def cancel_outcome(status: int, headers: Mapping[str, str], body: bytes) -> CancelOutcome:
    """What a cancel PUT achieved; 400 and 404 are outcomes here, not errors."""
    try:
        parsed = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        # A gateway's HTML error page: the status decides (a 502 must stay retryable).
        parsed = None
    value = parsed.get("status") if isinstance(parsed, Mapping) else None
    if 200 <= status < 300:
        return CancelOutcome.OK if value == "OK" else CancelOutcome.REQUESTED
    if status == 400 and value == "ALREADY_COMPLETED":
        return CancelOutcome.ALREADY_COMPLETED
    if status == 404:
        return CancelOutcome.NOT_FOUND
    raise api_error(status, headers, body)
