"""Receive fal's webhooks safely: verify each delivery's signature, refuse replays.

fal POSTs ``{request_id, gateway_request_id, status, payload, error, payload_error}`` to a
job's ``fal_webhook`` URL when the job ends, signed with Ed25519 (headers
``X-Fal-Webhook-Request-Id``, ``-User-Id``, ``-Timestamp``, ``-Signature``), and retries it
for up to two hours. This package checks all of it:

* :func:`verify` turns headers and raw body into a :class:`WebhookEvent`, or raises a
  :class:`~fal_edit_async.WebhookError` saying what was wrong;
* :class:`JwksCache` fetches fal's public keys (``https://rest.fal.ai/.well-known/jwks.json``)
  and refetches once when a key fal rotated in since signs a delivery;
* :func:`create_app` is an aiohttp application that verifies, de-duplicates by request id and
  hands each event once to a callback or to a batch journal.

Needs the ``webhooks`` extra (``pip install 'fal-edit-async[webhooks]'``, for
``cryptography``). ``docs/webhooks.md`` shows the same for Starlette and FastAPI.

Usage::

    from fal_edit_async.webhooks import JwksCache, create_app

    app = create_app(jwks=JwksCache(), on_event=handle)  # async def handle(event): ...
"""

from __future__ import annotations

try:
    import cryptography  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fal_edit_async.webhooks needs the 'webhooks' extra: pip install 'fal-edit-async[webhooks]'"
    ) from exc

from .._exceptions import (
    WebhookError as WebhookError,
    WebhookKeysError as WebhookKeysError,
    WebhookPayloadError as WebhookPayloadError,
    WebhookRequestIdError as WebhookRequestIdError,
    WebhookSignatureError as WebhookSignatureError,
    WebhookTimestampError as WebhookTimestampError,
    WebhookUnverifiedError as WebhookUnverifiedError,
)
from .._webhook_models import WebhookEvent as WebhookEvent, WebhookTag as WebhookTag
from ._jwks import (
    DEFAULT_JWKS_URL as DEFAULT_JWKS_URL,
    MAX_TTL as MAX_TTL,
    JwksCache as JwksCache,
    jwks_url_for as jwks_url_for,
)
from ._receiver import (
    STATISTICS as STATISTICS,
    ReceiverStatistics as ReceiverStatistics,
    WebhookSink as WebhookSink,
    create_app as create_app,
)
from ._verify import (
    DEFAULT_MAX_BODY as DEFAULT_MAX_BODY,
    DEFAULT_TOLERANCE as DEFAULT_TOLERANCE,
    HEADERS as HEADERS,
    WebhookKeys as WebhookKeys,
    signed_message as signed_message,
    verify as verify,
)

__all__ = [
    "DEFAULT_JWKS_URL",
    "DEFAULT_MAX_BODY",
    "DEFAULT_TOLERANCE",
    "HEADERS",
    "JwksCache",
    "MAX_TTL",
    "ReceiverStatistics",
    "STATISTICS",
    "WebhookError",
    "WebhookEvent",
    "WebhookKeys",
    "WebhookKeysError",
    "WebhookPayloadError",
    "WebhookRequestIdError",
    "WebhookSignatureError",
    "WebhookSink",
    "WebhookTag",
    "WebhookTimestampError",
    "WebhookUnverifiedError",
    "create_app",
    "jwks_url_for",
    "signed_message",
    "verify",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
