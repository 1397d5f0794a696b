"""The fal queue API as pure functions: URLs, headers, and answers turned into models or errors.

Nothing here awaits, so all of it is tested without an event loop or a server.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

from ._endpoint import DEFAULT_ENDPOINT, EndpointId
from ._exceptions import (
    APIError,
    AuthError,
    BillingError,
    InputError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
    describe_detail,
)
from ._models import (
    CancelOutcome,
    EditImageInput,
    EditImageOutput,
    JobUrls,
    SubmitOptions,
    SubmitReceipt,
)

__all__ = [
    "PRIORITIES",
    "RETRYABLE_ERROR_TYPES",
    "api_error",
    "cancel_outcome",
    "check_image_count",
    "check_submit_options",
    "decode_json",
    "error_body",
    "from_fal",
    "header_safe",
    "is_ingress_error",
    "is_transient",
    "job_retryable",
    "job_urls",
    "origin",
    "parse_receipt",
    "parse_retry_after",
    "result_not_ready",
    "retryable_header",
    "Origins",
    "same_origin",
    "submit_headers",
    "submit_never_queued",
    "submit_target",
    "trusted_job_urls",
    "urls_from_receipt",
]

#: The queue priorities fal-client accepts.
PRIORITIES = ("normal", "low")

# RFC 9110 field names are tokens; values may hold anything but the bytes that end a line.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LINE_BREAKS = re.compile(r"[\r\n\0]")


def header_safe(value: str) -> bool:
    """True when ``value`` can be sent as a header value: no CR, LF or NUL, which would end
    the header (aiohttp refuses them with a plain ``ValueError``)."""
    return _LINE_BREAKS.search(value) is None


def origin(url: str) -> tuple[str, str]:
    """Scheme and host:port of a URL, lower-cased: what decides where the key may go.

    A URL that does not parse (a port of 99999, a broken IPv6 literal) has no origin, so it
    matches none: it is never trusted with the key, and never raises. Nor has one whose
    authority holds user info or a backslash (``http://evil@queue/``, ``http://evil\\@queue/``):
    parsers disagree on where such a host starts, and aiohttp refuses to send the key to it.
    """
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc or "\\" in parts.netloc:
            return "", ""
        port = parts.port
        if port is None:  # not ``or``: an explicit :0 is a port of its own, not the default
            port = {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:
        return "", ""
    return parts.scheme.lower(), f"{(parts.hostname or '').lower()}:{port}"


class Origins:
    """The origins of some base URLs, parsed once: ``url in origins`` is true when ``url``
    is on any of them. A URL under a base needs no parsing (this runs several times for
    every request, so the common case stays a string comparison)."""

    __slots__ = ("_origins", "_prefixes")

    def __init__(self, *bases: str) -> None:
        self._prefixes = tuple(base.rstrip("/") + "/" for base in bases)
        # A base that does not parse has no origin, so it matches nothing but its prefix.
        self._origins = frozenset(o for base in bases if (o := origin(base)) != ("", ""))

    def __contains__(self, url: str) -> bool:
        if url.startswith(self._prefixes):
            return True
        # Every download asks about the CDN's origin: parse each scheme://authority once.
        match = _AUTHORITY.match(url)
        if match is None:
            return origin(url) in self._origins
        return _origin_of_authority(match.group()) in self._origins


#: ``scheme://authority``, ending where urlsplit ends the authority: its origin is the URL's.
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


@functools.lru_cache(maxsize=256)
def _origin_of_authority(prefix: str) -> tuple[str, str]:
    return origin(prefix)


def same_origin(url: str, base_url: str) -> bool:
    """True when ``url`` is on ``base_url``'s origin."""
    return url in _origins_of(base_url)


@functools.lru_cache(maxsize=16)
def _origins_of(base_url: str) -> Origins:
    return Origins(base_url)


def _usable_request_id(request_id: str) -> bool:
    # It becomes a path segment of every job URL the key is sent to.
    if not request_id or request_id in (".", ".."):
        return False
    return "/" not in request_id and header_safe(request_id)


def job_urls(queue_url: str, endpoint: EndpointId, request_id: str) -> JobUrls:
    """The URLs for re-attaching by request id: app root only, sub-path dropped."""
    base = _job_base(queue_url, endpoint.app_root, request_id)
    return JobUrls(
        request_id=request_id,
        status_url=f"{base}/status",
        response_url=base,
        cancel_url=f"{base}/cancel",
    )


def _job_base(queue_url: str, root: str, request_id: str) -> str:
    """``<queue>/<root>/requests/<id>``: the result URL, the others' stem."""
    if not isinstance(request_id, str) or not _usable_request_id(request_id):
        raise InputError("request_id", request_id, "a fal request id")
    # Percent-encoded, not refused: a submit answer's id names a job fal queued (and bills),
    # so refusing it would lose that job; raw, a '#' or '?' would cut the path short and
    # send the status poll and the cancel to another URL. fal's ids (UUIDs) are unchanged.
    segment = quote(request_id, safe="-._~")
    return f"{queue_url.rstrip('/')}/{root}/requests/{segment}"


def urls_from_receipt(queue_url: str, endpoint: EndpointId, receipt: SubmitReceipt) -> JobUrls:
    """The server's own URLs, unless any points off the queue origin.

    The key is sent to those URLs, so a receipt that names another host is not trusted:
    the URLs are built locally instead, as @fal-ai/client always does.
    """
    urls = JobUrls(
        request_id=receipt.request_id,
        status_url=receipt.status_url,
        response_url=receipt.response_url,
        cancel_url=receipt.cancel_url,
    )
    return trusted_job_urls(queue_url, endpoint, urls)


def trusted_job_urls(queue_url: str, endpoint: EndpointId, urls: JobUrls) -> JobUrls:
    """``urls`` when they are the ones fal gives this job on the configured queue, else the
    ones built locally (the same requests, in fal's usual form).

    Also for URLs read back from a journal, which an older version may have trusted. Kept
    are only the forms fal is known to answer with: the endpoint's app with or without its
    sub-path, and a result URL with or without ``/response``. Anything else is rebuilt:
    another job's URLs would have this one follow that job and take its output; another
    app's path, fal's 404 for an id it does not know there (read as an expired result); a
    foreign host would get the key; a ``..``, a fragment or a query parsers read apart.
    """
    request_id = urls.request_id
    for root in {endpoint.app_root, endpoint.submit_path}:
        base = _job_base(queue_url, root, request_id)
        if (
            urls.status_url == f"{base}/status"
            and urls.cancel_url == f"{base}/cancel"
            and urls.response_url in (base, f"{base}/response")
        ):
            return urls
    return job_urls(queue_url, endpoint, request_id)


def parse_receipt(payload: Any, queue_url: str, endpoint: EndpointId) -> SubmitReceipt:
    """The submit answer; a receipt missing its URLs still keeps the paid job's id."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("request_id"), str):
        raise ProtocolError("submit answer has no request_id", payload=payload)
    if not _usable_request_id(payload["request_id"]):
        # The server's fault, though it queued a job: not an InputError ("nothing was sent").
        raise ProtocolError("submit answer has an unusable request_id", payload=payload)
    built = job_urls(queue_url, endpoint, payload["request_id"])
    position = payload.get("queue_position")
    return SubmitReceipt(
        request_id=payload["request_id"],
        response_url=str(payload.get("response_url") or built.response_url),
        status_url=str(payload.get("status_url") or built.status_url),
        cancel_url=str(payload.get("cancel_url") or built.cancel_url),
        queue_position=position if isinstance(position, int) else None,
    )


def check_submit_options(options: Mapping[str, Any], caller: str) -> SubmitOptions:
    """``options`` when every key is a submit option and every value valid: an unknown key is
    the ``TypeError`` Python itself would raise for an unknown keyword (with a suggestion), a
    bad value an :class:`InputError`, both before anything is sent."""
    known = SubmitOptions.__annotations__
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{hint}")
    submit_target(options)  # type: ignore[arg-type]
    return options  # type: ignore[return-value]


def submit_target(
    options: SubmitOptions,
) -> tuple[EndpointId, dict[str, str], dict[str, str] | None]:
    """Where a submit goes and what it carries besides its body: the endpoint, the extra
    headers and the query parameters, every option value checked."""
    endpoint = EndpointId.parse(options.get("endpoint", DEFAULT_ENDPOINT))
    headers = submit_headers(
        priority=options.get("priority"),
        hint=options.get("hint"),
        start_timeout=options.get("start_timeout"),
        headers=options.get("headers"),
    )
    webhook_url = options.get("webhook_url")
    if webhook_url is None:
        return endpoint, headers, None
    if not _is_http_url(webhook_url):
        raise InputError("webhook_url", webhook_url, "an http(s) URL, or None")
    return endpoint, headers, {"fal_webhook": webhook_url}


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or not header_safe(value) or " " in value:
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # a ValueError for a port fal could not call either
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def submit_headers(
    *,
    priority: str | None = None,
    hint: str | None = None,
    start_timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The optional submit headers, validated as fal-client validates them."""
    out = _extra_headers(headers)
    if priority is not None:
        if priority not in PRIORITIES:
            raise InputError("priority", priority, " | ".join(PRIORITIES))
        out["X-Fal-Queue-Priority"] = priority
    if hint is not None:
        if not isinstance(hint, str) or not hint or not header_safe(hint):
            raise InputError("hint", hint, "a non-empty string on one line")
        out["X-Fal-Runner-Hint"] = hint
    if start_timeout is not None:
        if (
            isinstance(start_timeout, bool)
            or not isinstance(start_timeout, int | float)
            or not math.isfinite(start_timeout)
            or start_timeout <= 1
        ):
            raise InputError("start_timeout", start_timeout, "a number of seconds above 1")
        # fal documents X-Fal-Request-Start-Timeout (it wins when both are sent); the
        # deprecated header is kept because fal-client 1.0.3 sends only that one, so it is
        # the one known to work on every gateway that still reads the old name.
        out["X-Fal-Request-Start-Timeout"] = str(float(start_timeout))
        out["X-Fal-Request-Timeout"] = str(float(start_timeout))
    return out


def _extra_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InputError("headers", type(headers).__name__, "a mapping of header names to values")
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise InputError("headers", name, "header names that are HTTP tokens")
        if not isinstance(value, str) or not header_safe(value):
            raise InputError("headers", name, "header values: strings without CR, LF or NUL")
        if name.lower() == "authorization":
            raise InputError("headers", name, "no Authorization header (set api_key)")
    return dict(headers)


def is_transient(status: int) -> bool:
    """True for an HTTP status that another try of the same request may cure.

    The one rule for every idempotent call (status, result, cancel, uploads, downloads):
    408 (timeout), 429 (rate limited), 499 (a proxy's "client closed request", or fal's
    ``client_disconnected``: about this request, not the job) and any 5xx. Submits are
    stricter (see ``_retry``).
    """
    return status in (408, 429, 499) or status >= 500


_NOT_DONE = ("IN_QUEUE", "IN_PROGRESS")


def result_not_ready(status: int, body: Any) -> bool:
    """True for an answer to a result GET that says the result is not there yet: fal's 400
    "still in progress", a 202 (the status endpoint's "running"), or a body whose ``status``
    is IN_QUEUE / IN_PROGRESS. fal's result store may lag its status: ask again."""
    if status == 202:
        return True
    if not isinstance(body, Mapping):
        return False
    detail = body.get("detail")
    if status == 400 and isinstance(detail, str) and "still in progress" in detail.lower():
        return True
    return status < 500 and body.get("status") in _NOT_DONE


def is_ingress_error(exc: BaseException) -> bool:
    """True for a 502/503/504 from fal's ingress, in front of the queue: no
    ``x-fal-request-id`` and nginx's error page, the test fal-client makes
    (``_is_ingress_error``). A load balancer's bare 504 may come after the queue stored the
    POST, so it proves nothing."""
    if not isinstance(exc, APIError) or exc.status not in (502, 503, 504):
        return False
    return exc.request_id is None and isinstance(exc.body, str) and "nginx" in exc.body


def submit_never_queued(exc: BaseException) -> bool:
    """True when a failed submit provably created no job, so sending it again is safe.

    fal refused it (any 4xx: 429 and 422 included), an ingress error (see
    :func:`is_ingress_error`: the queue never saw it), or a connection that never opened.
    Anything else (a reset or timeout after sending, a 5xx from fal itself or from a load
    balancer, a garbled 200) may hide a queued job.
    """
    if isinstance(exc, TransportError):
        return not exc.sent
    if isinstance(exc, APIError):
        return 400 <= exc.status < 500 or is_ingress_error(exc)
    return False


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer


def _loads(body: bytes | str) -> Any:
    """``json.loads``, where a body nested too deeply to parse is a ``ValueError`` like any
    other bad JSON (a hostile server's 100,000 brackets are a ``RecursionError`` otherwise)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def decode_json(body: bytes | str, *, what: str) -> Any:
    """Parse a JSON body, or raise ProtocolError naming what it was for."""
    try:
        return _loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
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
    # Nothing said (a proxy's bare 499 or 502): the status alone, already in the error's text.
    return "no body" if status != 499 else "no body (a proxy's 'client closed request')"


def _locked(message: str) -> bool:
    # fal: 403 {"detail": "User is locked. Reason: Exhausted balance"}.
    text = message.lower()
    return "locked" in text or "balance" in text


def error_body(body: bytes) -> Any:
    """A non-2xx answer's body: its JSON, else its text (a proxy's page), None when empty."""
    try:
        return _loads(body) if body else None
    except ValueError:
        return body.decode("utf-8", errors="replace")


def from_fal(body: Any) -> bool:
    """True for an error body fal itself wrote (a JSON object); a proxy's or a gateway's
    page, or nothing at all, says nothing of fal's jobs."""
    return isinstance(body, Mapping)


def api_error(status: int, headers: Mapping[str, str], body: bytes) -> APIError:
    """The typed error for a non-2xx answer."""
    parsed = error_body(body)
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
    if status == 402 or (status == 403 and _locked(message)):
        advice = "the key is valid but the account cannot pay: add credit in fal's dashboard"
        return BillingError(f"{message}. {advice}", **kw)
    if status == 401:
        return AuthError(f"{message}. Set FAL_KEY to a valid fal API key", **kw)
    if status == 403:
        advice = "the key is not allowed to do this: check its scope and the fal account"
        return AuthError(f"{message}. {advice}", **kw)
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
    """What a cancel PUT achieved; 400 and 404 are outcomes here, not errors.

    fal answers 400 ``{"status": "ALREADY_COMPLETED"}``, and has been seen answering 400
    ``{"detail": "..."}``: both mean fal will not cancel it, so the job is left to finish
    and be re-attached (``ALREADY_COMPLETED``), unless the detail says it is not found.
    """
    try:
        parsed = _loads(body) if body else {}
    except ValueError:
        # A gateway's HTML error page: the status decides (a 502 must stay retryable).
        parsed = None
    value = parsed.get("status") if isinstance(parsed, Mapping) else None
    if 200 <= status < 300:
        return CancelOutcome.OK if value == "OK" else CancelOutcome.REQUESTED
    if status == 400 and value == "ALREADY_COMPLETED":
        return CancelOutcome.ALREADY_COMPLETED
    detail = parsed.get("detail") if isinstance(parsed, Mapping) else None
    if status == 400 and isinstance(detail, str):
        if "not found" in detail.lower():
            return CancelOutcome.NOT_FOUND
        return CancelOutcome.ALREADY_COMPLETED
    if status == 404:
        return CancelOutcome.NOT_FOUND
    raise api_error(status, headers, body)


#: fal request-error types worth a second job: the runner failed, not the request. fal retries
#: 503/504 itself and never retries a 500 or 502 (its retries page), so a 500 from the runner's
#: own code (``runner_server_error``) and a request over its processing time
#: (``request_timeout``) would most likely fail again: they are not here.
RETRYABLE_ERROR_TYPES = frozenset(
    {
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "internal_error",
    }
)


def retryable_header(value: str | None) -> bool | None:
    """fal's ``X-Fal-Retryable`` verdict, or None when it sent none."""
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes")


def job_retryable(
    *, status: int | None, error_type: str | None, timeout_type: str | None, header: bool | None
) -> bool:
    """True when a failed job deserves a second (paid) job: the runner failed, not the request.

    The model's refusals (422) and the caller's own start timeout never do; otherwise fal's
    ``X-Fal-Retryable`` decides when sent, and its table of error types when not.
    """
    if status == 422 or timeout_type == "user":
        return False
    if header is not None:
        return header
    return error_type in RETRYABLE_ERROR_TYPES


def check_image_count(
    input: EditImageInput, output: EditImageOutput, request_id: str | None
) -> EditImageOutput:
    """Refuse a result with more images than asked for: a hostile or broken server must not
    make us download (or pay attention to) an unbounded number of files."""
    if len(output.images) > input.num_images:
        raise ProtocolError(
            f"result has {len(output.images)} images but num_images={input.num_images}",
            request_id=request_id,
        )
    return output
