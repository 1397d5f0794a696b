"""Client configuration: small frozen value objects with named defaults.

Environment variables are read here and nowhere else, once, by :meth:`ClientConfig.from_env`:
``FAL_KEY`` (or ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``, joined as fal-client joins them),
``FAL_QUEUE_URL``, ``FAL_REST_URL`` and ``FAL_API_URL``. The key is held by
:class:`Credentials`, whose repr and str never show it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import attrs

from ._exceptions import InputError
from ._protocol import header_safe
from ._version import __version__

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_LIMITS",
    "DEFAULT_POLLING",
    "DEFAULT_QUEUE_URL",
    "DEFAULT_REST_URL",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "ClientConfig",
    "Credentials",
    "Limits",
    "Polling",
    "RetryPolicy",
    "Timeouts",
    "check_timeout",
]

DEFAULT_QUEUE_URL = "https://queue.fal.run"
#: Names this client and its version, as fal-client does (``fal-client/1.0.3 (python)``).
DEFAULT_USER_AGENT = f"fal-edit-async/{__version__} (python)"
DEFAULT_REST_URL = "https://rest.fal.ai"
#: fal's platform API: the request history (``/v1/models/requests/by-endpoint``).
DEFAULT_API_URL = "https://api.fal.ai"


def _number(value: object) -> TypeGuard[int | float]:
    """A real number, finite: NaN passes every comparison's ``False`` branch, and no setting
    here means anything at infinity (an endless cancel, a backoff of ``uniform(0, inf)``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def _positive(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not _number(value) or value <= 0:
            raise InputError(f"{name}.{attribute.name}", value, "a positive number")
        if attribute.type in ("int", int) and not isinstance(value, int):
            raise InputError(f"{name}.{attribute.name}", value, "a positive whole number")

    return check


def _non_negative(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not _number(value) or value < 0:
            raise InputError(f"{name}.{attribute.name}", value, "zero or a positive number")

    return check


def check_timeout(value: float | None, field: str = "timeout") -> float | None:
    """A caller's ``timeout=``: None (no deadline) or finite seconds, zero included; else an
    :class:`InputError`, before anything is sent (anyio's own ``ValueError`` for NaN would
    come only once a job was paid for)."""
    if value is not None and (not _number(value) or value < 0):
        raise InputError(field, value, "zero or a positive number of seconds, or None")
    return value


@attrs.frozen(repr=False)
class Credentials:
    """An API key (``FAL_KEY``, or ``id:secret``). Its repr and str never show the key.

    Usage::

        Credentials("my-key").header_value  # "Key my-key", for the Authorization header
    """

    key: str = attrs.field()

    @key.validator
    def _check(self, _: attrs.Attribute[str], value: str) -> None:
        # It travels in a header: CR, LF or NUL would end it (aiohttp's ValueError, per call).
        if not isinstance(value, str) or not value.strip() or not header_safe(value):
            raise InputError("api_key", "<redacted>", "a non-empty key on one line")

    @property
    def header_value(self) -> str:
        """The value of the ``Authorization`` header: ``Key <key>``."""
        return f"Key {self.key}"

    def __repr__(self) -> str:
        return "Credentials(key=<redacted>)"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """Read ``FAL_KEY``, or ``FAL_KEY_ID`` and ``FAL_KEY_SECRET``; None when neither is set."""
        env = os.environ if environ is None else environ
        if env.get("FAL_KEY"):
            return cls(env["FAL_KEY"])
        key_id, secret = env.get("FAL_KEY_ID"), env.get("FAL_KEY_SECRET")
        if key_id and secret:
            return cls(f"{key_id}:{secret}")
        return None


@attrs.frozen(kw_only=True)
class Timeouts:
    """Network timeouts in seconds.

    ``read`` bounds each wait for bytes, never a whole response, so a long status stream or a
    large download is not cut off while data keeps arriving. ``stream_idle`` must exceed fal's
    15 s keep-alive interval. ``cancel`` bounds the shielded cancel sent on the way out.
    ``submit`` replaces ``read`` for the submit POST, which fal may answer slowly (fal-client
    allows it 120 s); a submit that times out is an unknown outcome, never sent again.
    """

    connect: float = attrs.field(default=10.0, validator=_positive("Timeouts"))
    read: float = attrs.field(default=60.0, validator=_positive("Timeouts"))
    stream_idle: float = attrs.field(default=45.0, validator=_positive("Timeouts"))
    cancel: float = attrs.field(default=10.0, validator=_positive("Timeouts"))
    submit: float = attrs.field(default=120.0, validator=_positive("Timeouts"))


@attrs.frozen(kw_only=True)
class Limits:
    """Concurrency bounds: connections per client, and a batch's uploads, jobs and downloads.

    ``jobs`` is how many jobs a batch keeps on fal at once (fal queues beyond your account's
    concurrency, so more only adds queue time); uploads and downloads are bounded separately
    so memory stays flat however large the batch.

    ``max_connections`` caps open sockets per client. Each job being followed holds one (its
    status stream), so keep it above a batch's ``concurrency`` plus its downloads;
    ``edit_many`` refuses a batch that would not fit.

    Sizes, in bytes: a local input image larger than ``max_input_bytes`` is an
    :class:`InputError`; one up to ``inline_bytes`` is sent inline as a data URI rather than
    uploaded; a download larger than ``max_output_bytes`` is refused.

    What a server sends is bounded too, so a broken or hostile one cannot fill the memory:
    an API answer (a status, a result: sync-mode results hold their images) larger than
    ``max_response_bytes`` is a :class:`ProtocolError`; a status-stream line or event larger
    than ``max_event_bytes`` ends the stream (the job is polled instead); a job keeps its
    last ``max_log_lines`` log lines (older ones are dropped from ``Completed.logs``).
    """

    max_connections: int = attrs.field(default=512, validator=_positive("Limits"))
    jobs: int = attrs.field(default=16, validator=_positive("Limits"))
    uploads: int = attrs.field(default=4, validator=_positive("Limits"))
    downloads: int = attrs.field(default=8, validator=_positive("Limits"))
    max_input_bytes: int = attrs.field(default=50 * 2**20, validator=_positive("Limits"))
    inline_bytes: int = attrs.field(default=256 * 2**10, validator=_non_negative("Limits"))
    max_output_bytes: int = attrs.field(default=64 * 2**20, validator=_positive("Limits"))
    max_response_bytes: int = attrs.field(default=32 * 2**20, validator=_positive("Limits"))
    max_event_bytes: int = attrs.field(default=2**20, validator=_positive("Limits"))
    max_log_lines: int = attrs.field(default=10_000, validator=_positive("Limits"))


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter; ``Retry-After`` wins when fal sends it.

    ``wait=False`` turns every wait off (tests); attempts are still counted and capped.
    ``retry_ambiguous_submit`` lets a submit be sent again after a failure that may have
    enqueued it (a reset or timeout after the body was sent). Off by default: a second POST
    is a second paid job.
    """

    max_attempts: int = attrs.field(default=6, validator=_positive("RetryPolicy"))
    base_delay: float = attrs.field(default=0.25, validator=_non_negative("RetryPolicy"))
    max_delay: float = attrs.field(default=20.0, validator=_non_negative("RetryPolicy"))
    max_retry_after: float = attrs.field(default=120.0, validator=_non_negative("RetryPolicy"))
    wait: bool = True
    retry_ambiguous_submit: bool = False


@attrs.frozen(kw_only=True)
class Polling:
    """Status polling, used when the SSE status stream is refused or keeps dropping.

    The interval starts at the state's value and grows by ``backoff`` up to ``max_interval``
    while nothing changes; any change resets it. ``stream_failures`` dropped streams in a row
    make the client fall back to polling for the rest of that job.

    A status value this client does not know is treated as "still running", but only for
    ``max_unknown_statuses`` updates in a row: then the wait ends in a :class:`ProtocolError`
    naming the job (it can be re-attached), rather than waiting for ever.
    """

    queued_interval: float = attrs.field(default=1.0, validator=_non_negative("Polling"))
    in_progress_interval: float = attrs.field(default=0.25, validator=_non_negative("Polling"))
    max_interval: float = attrs.field(default=5.0, validator=_non_negative("Polling"))
    backoff: float = attrs.field(default=1.5, validator=_positive("Polling"))
    use_stream: bool = True
    stream_failures: int = attrs.field(default=3, validator=_positive("Polling"))
    max_unknown_statuses: int = attrs.field(default=120, validator=_positive("Polling"))


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_LIMITS = Limits()
DEFAULT_RETRY = RetryPolicy()
DEFAULT_POLLING = Polling()


def _base_url(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise InputError(name, value, "an http(s) base URL")
    if not urlsplit(value).hostname:
        raise InputError(name, value, "an http(s) base URL")
    return value.rstrip("/")


def _credentials(value: object) -> Credentials | None:
    # A plain string is wrapped at once, so the key is never held where a repr could show it.
    if value is None or isinstance(value, Credentials):
        return value
    if isinstance(value, str):
        return Credentials(value)
    raise InputError("credentials", type(value).__name__, "a Credentials, a key string or None")


def _queue_url(value: object) -> str:
    return _base_url("queue_url", value)


def _rest_url(value: object) -> str:
    return _base_url("rest_url", value)


def _api_url(value: object) -> str:
    return _base_url("api_url", value)


@attrs.frozen(kw_only=True)
class ClientConfig:
    """Everything an :class:`AsyncClient` needs; build it with :meth:`from_env`.

    Usage::

        config = ClientConfig.from_env(limits=Limits(jobs=64))
    """

    credentials: Credentials | None = attrs.field(default=None, converter=_credentials)
    queue_url: str = attrs.field(default=DEFAULT_QUEUE_URL, converter=_queue_url)
    rest_url: str = attrs.field(default=DEFAULT_REST_URL, converter=_rest_url)
    #: fal's platform API (request history); the key is sent here too.
    api_url: str = attrs.field(default=DEFAULT_API_URL, converter=_api_url)
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    limits: Limits = DEFAULT_LIMITS
    retry: RetryPolicy = DEFAULT_RETRY
    polling: Polling = DEFAULT_POLLING
    user_agent: str = DEFAULT_USER_AGENT

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        api_key: str | None = None,
        queue_url: str | None = None,
        rest_url: str | None = None,
        api_url: str | None = None,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        polling: Polling | None = None,
    ) -> ClientConfig:
        """Read credentials and base URLs from the environment; arguments win over it.

        An argument left as None means "not given": the environment's value, else the default.
        """
        env = os.environ if environ is None else environ
        creds = Credentials(api_key) if api_key is not None else Credentials.from_env(env)
        queue_url = queue_url if queue_url is not None else env.get("FAL_QUEUE_URL") or None
        rest_url = rest_url if rest_url is not None else env.get("FAL_REST_URL") or None
        api_url = api_url if api_url is not None else env.get("FAL_API_URL") or None
        return cls(
            credentials=creds,
            queue_url=DEFAULT_QUEUE_URL if queue_url is None else queue_url,
            rest_url=DEFAULT_REST_URL if rest_url is None else rest_url,
            api_url=DEFAULT_API_URL if api_url is None else api_url,
            timeouts=DEFAULT_TIMEOUTS if timeouts is None else timeouts,
            limits=DEFAULT_LIMITS if limits is None else limits,
            retry=DEFAULT_RETRY if retry is None else retry,
            polling=DEFAULT_POLLING if polling is None else polling,
        )
