"""Every error this package raises, under one base class.

::

    FalEditError
    ├── InputError            a request failed local validation; nothing was sent
    │   └── MissingCredentialsError  no key: FAL_KEY is not set and none was given
    ├── TransportError        connection failed, was reset or timed out
    ├── APIError              fal answered with a non-2xx status
    │   ├── AuthError           401 / 403: the key is missing, wrong or not allowed
    │   │   └── BillingError          402, 403 "User is locked": the account cannot pay
    │   ├── NotFoundError       404: unknown endpoint or request id
    │   ├── RateLimitError      429: too many requests; ``retry_after`` when fal said
    │   ├── ValidationError     422: the model rejected the input; ``field_errors``
    │   └── ServerError         5xx: fal or the runner failed
    ├── ProtocolError         a payload did not match our models; the path to the bad field
    ├── JobFailedError        the job ended COMPLETED with an error; detail and logs attached
    ├── JobCancelledError     the job was cancelled before it produced a result
    ├── JobTimeoutError       a deadline passed while waiting (also a ``TimeoutError``)
    ├── DownloadError         one output file could not be downloaded or verified
    ├── BudgetExceededError   submitting would cross the configured budget
    ├── UnknownSubmitError    a submit's answer was lost: fal may have queued that job
    ├── JournalError          the batch journal cannot be opened, read or written
    │   └── JournalLockedError  another process is writing that journal
    ├── WebhookError          a webhook delivery was refused; ``http_status`` to answer
    │   ├── WebhookSignatureError   signature headers missing or malformed
    │   │   └── WebhookUnverifiedError  well formed, but no key of fal's JWKS verifies it
    │   ├── WebhookTimestampError   signed too long ago (a replay) or in the future
    │   ├── WebhookRequestIdError   the body's request id is not the signed one
    │   ├── WebhookPayloadError     the body is not a JSON object, or too large
    │   └── WebhookKeysError        fal's public keys could not be fetched (answer 5xx)
    ├── InternalError         anything else that went wrong inside one batch item
    └── EventLoopError        used off asyncio, or from a loop other than its own (a RuntimeError)

Messages never contain the API key: nothing in this module is ever given one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "APIError",
    "AuthError",
    "BillingError",
    "BudgetExceededError",
    "DownloadError",
    "EventLoopError",
    "FalEditError",
    "InputError",
    "InternalError",
    "JobCancelledError",
    "JobFailedError",
    "JobTimeoutError",
    "JournalError",
    "JournalLockedError",
    "MissingCredentialsError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "TransportError",
    "UnknownSubmitError",
    "ValidationError",
    "WebhookError",
    "WebhookKeysError",
    "WebhookPayloadError",
    "WebhookRequestIdError",
    "WebhookSignatureError",
    "WebhookTimestampError",
    "WebhookUnverifiedError",
]


def _with_request_id(message: str, request_id: str | None) -> str:
    if not request_id:
        return message
    suffix = f" (request_id={request_id})"
    # A message kept from an earlier error (a journal's row) may carry it already.
    return message if message.endswith(suffix) else message + suffix


class FalEditError(Exception):
    """Base class of every error raised by fal_edit_async."""


class InputError(FalEditError, ValueError):
    """A request failed local validation before anything was sent or paid for."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: invalid value {_short_repr(value)}; expected {allowed}")


class MissingCredentialsError(InputError):
    """No API key: ``FAL_KEY`` (or ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``) is not set and no
    ``api_key=`` was given. Raised when the client is built, so nothing is ever sent."""

    def __init__(self) -> None:
        self.field = "api_key"
        self.value = None
        self.allowed = "a fal key"
        FalEditError.__init__(
            self,
            "no fal credentials: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET), or pass "
            "api_key=; an emulator takes any key (Emulator.api_key)",
        )


class TransportError(FalEditError):
    """The connection failed, was reset, or timed out before an answer arrived.

    ``sent`` is False only when the request surely never reached the server (the connection
    could not be opened), which is what makes a retried submit safe.
    """

    def __init__(self, message: str, *, url: str | None = None, sent: bool = True) -> None:
        self.url = url
        self.sent = sent
        super().__init__(f"{message} ({url})" if url else message)


class APIError(FalEditError):
    """fal answered with a non-2xx HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: Any = None,
        request_id: str | None = None,
        error_type: str | None = None,
        timeout_type: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.request_id = request_id
        self.error_type = error_type
        self.timeout_type = timeout_type
        kind = f", {error_type}" if error_type else ""
        super().__init__(_with_request_id(f"HTTP {status}{kind}: {message}", request_id))


class AuthError(APIError):
    """fal refused the credentials: 401 (set FAL_KEY to a valid key) or 403 (the key may not
    do this). A batch submits nothing more after one."""


class BillingError(AuthError):
    """The key is valid but the account may not run jobs (402, or 403 "User is locked.
    Reason: Exhausted balance"): add credit; a batch submits nothing more."""


class NotFoundError(APIError):
    """fal does not know the endpoint or request id (404)."""


class RateLimitError(APIError):
    """fal asked us to slow down (429); ``retry_after`` is in seconds when fal said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ValidationError(APIError):
    """The model rejected the input (422); ``field_errors`` lists each bad field."""

    @property
    def field_errors(self) -> list[Mapping[str, Any]]:
        """The ``detail`` entries fal sent, each with ``loc``, ``msg`` and ``type``."""
        return field_errors_of(self.body)


class ServerError(APIError):
    """fal or its runner failed (5xx)."""


class ProtocolError(FalEditError):
    """A payload from the server did not match the shape we expect."""

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[str] = (),
        payload: Any = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.details = list(details)
        self.payload = payload
        self.request_id = request_id
        text = message if not self.details else f"{message}: " + "; ".join(self.details)
        super().__init__(_with_request_id(text, request_id))

    def for_request(self, request_id: str) -> ProtocolError:
        """The same error naming the job it concerns (for fal support, and to re-attach)."""
        if self.request_id is not None:
            return self
        return ProtocolError(
            self.message, details=self.details, payload=self.payload, request_id=request_id
        )


class JobFailedError(FalEditError):
    """The job ended COMPLETED with an error; ``detail`` is the result endpoint's body."""

    def __init__(
        self,
        *,
        request_id: str,
        error: str | None,
        error_type: str | None = None,
        detail: Any = None,
        status: int | None = None,
        logs: Sequence[Any] = (),
        retryable: bool | None = None,
        timeout_type: str | None = None,
    ) -> None:
        self.timeout_type = timeout_type
        self.request_id = request_id
        self.error = error
        self.error_type = error_type
        self.detail = detail
        self.status = status
        self.logs = list(logs)
        self.retryable = retryable
        text = error or "job failed"
        if error_type:
            text = f"{text} [{error_type}]"
        if detail is not None:
            text = f"{text}: {describe_detail(detail)}"
        super().__init__(_with_request_id(text, request_id))


class JobCancelledError(FalEditError):
    """The job was cancelled before it produced a result."""

    def __init__(self, request_id: str, message: str = "job was cancelled") -> None:
        self.request_id = request_id
        super().__init__(_with_request_id(message, request_id))


class JobTimeoutError(FalEditError, TimeoutError):
    """A deadline passed while waiting for a job; the job was asked to cancel."""

    def __init__(self, request_id: str | None, timeout: float) -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(_with_request_id(f"no result within {timeout:g} s", request_id))


class DownloadError(FalEditError):
    """One output file could not be downloaded or failed verification."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = url
        super().__init__(f"{message} ({_redact_data_uri(url)})" if url else message)


class BudgetExceededError(FalEditError):
    """Submitting this job would cross the configured budget, so it was not sent."""

    def __init__(self, *, estimate: float, spent: float, budget: float) -> None:
        self.estimate = estimate
        self.spent = spent
        self.budget = budget
        super().__init__(
            f"estimated ${estimate:.3f} on top of ${spent:.3f} would cross the ${budget:.2f} budget"
        )


class UnknownSubmitError(FalEditError):
    """A submit was sent but its answer was lost, so fal may have queued (and billed) a job.

    The item is not submitted again unless asked (``resubmit_unknown=True``,
    ``--resubmit-unknown``): a second submit could be a second paid job. ``ambiguous``:
    reconciling found two or more jobs that may be this item's, and it is never submitted
    again, whatever was asked.
    """

    def __init__(
        self, message: str, *, request_id: str | None = None, ambiguous: bool = False
    ) -> None:
        self.request_id = request_id
        self.ambiguous = ambiguous
        super().__init__(_with_request_id(message, request_id))


class JournalError(FalEditError):
    """The batch journal cannot be opened, read or written (disk full, not a journal, ...).

    A batch that cannot write its journal submits nothing more; every job fal already
    accepted stays re-attachable by its request id.
    """


class JournalLockedError(JournalError):
    """Another process has this journal open for writing; two writers would pay twice."""

    def __init__(self, path: object, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"{path}: journal in use by another run ({holder}); wait for it to finish, "
            "or use another journal"
        )


class InternalError(FalEditError):
    """Something that is not a fal or input error went wrong inside one batch item.

    The original exception is ``__cause__``; the batch goes on with the other items.
    """


class WebhookError(FalEditError):
    """A webhook delivery was refused: nothing of it was recorded.

    ``http_status`` is what a receiver answers: a 4xx for a delivery that is bad (fal's
    retries would not help), a 5xx when the fault is ours (fal retries it later).
    """

    http_status = 400

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(_with_request_id(message, request_id))


class WebhookSignatureError(WebhookError):
    """A signature header is missing or malformed (not 64 bytes of hex)."""

    http_status = 401


class WebhookUnverifiedError(WebhookSignatureError):
    """The signature is well formed, but no key of fal's JWKS verifies it (tampered or forged)."""


class WebhookTimestampError(WebhookError):
    """The delivery was signed further from now than the tolerance: a replay, or a clock."""

    def __init__(self, message: str, *, timestamp: float, now: float, **kw: Any) -> None:
        self.timestamp = timestamp
        self.now = now
        super().__init__(message, **kw)


class WebhookRequestIdError(WebhookError):
    """The body names another request id than the signed ``X-Fal-Webhook-Request-Id``."""


class WebhookPayloadError(WebhookError):
    """The body is not a JSON object of fal's webhook shape, or is larger than allowed."""

    def __init__(self, message: str, *, http_status: int = 400, **kw: Any) -> None:
        self.http_status = http_status
        super().__init__(message, **kw)


class WebhookKeysError(WebhookError):
    """fal's public keys (the JWKS) could not be fetched or held no Ed25519 key.

    Answered 503: the delivery may be fine, and fal retries it later.
    """

    http_status = 503


class EventLoopError(FalEditError, RuntimeError):
    """The client was used where it cannot run: under an async library other than asyncio
    (aiohttp, its HTTP client, is asyncio-only), or from an event loop other than the one it
    was first used on (a client made at module level and used by two ``asyncio.run()``)."""


def field_errors_of(body: Any) -> list[Mapping[str, Any]]:
    """The list of field errors in a 422 body; a string ``detail`` becomes one entry."""
    detail = body.get("detail") if isinstance(body, Mapping) else None
    if isinstance(detail, list):
        return [d for d in detail if isinstance(d, Mapping)]
    if isinstance(detail, str):
        return [{"loc": [], "msg": detail, "type": "value_error"}]
    return []


def describe_detail(detail: Any) -> str:
    """One line for a fal error body: field errors as ``loc: msg``, else ``detail`` or the body."""
    errors = field_errors_of(detail)
    if errors:
        parts = []
        for err in errors:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return "; ".join(parts)
    if isinstance(detail, Mapping) and "detail" in detail:
        return str(detail["detail"])
    return _short_repr(detail, 300)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact_data_uri(url: str) -> str:
    return url[:40] + "..." if url.startswith("data:") and len(url) > 40 else url
