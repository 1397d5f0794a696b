"""Verifying one delivery: fal's Ed25519 signature, its timestamp, and the body's shape.

fal signs ``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256_hex(raw body)``
(UTF-8) with one of the keys in its JWKS, and sends the signature as hex in
``X-Fal-Webhook-Signature``. No key id is sent, so every key is tried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._exceptions import (
    WebhookKeysError,
    WebhookPayloadError,
    WebhookRequestIdError,
    WebhookSignatureError,
    WebhookTimestampError,
    WebhookUnverifiedError,
)
from .._webhook_models import WebhookEvent, WebhookTag

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_TOLERANCE",
    "HEADERS",
    "WebhookKeys",
    "check_headers",
    "signed_message",
    "verify",
]

#: Seconds a delivery's timestamp may be from now, either way (fal's documented window).
DEFAULT_TOLERANCE = 300.0
#: The largest body accepted. A result of four images as URLs is a few KB; data URIs
#: (``sync_mode``) are the reason this is not smaller.
DEFAULT_MAX_BODY = 16 * 2**20
#: The four signature headers, in the order their values are signed.
HEADERS = (
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
)


def _b64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _raw_keys(value: Iterable[bytes]) -> tuple[bytes, ...]:
    keys = tuple(value)
    if not keys or any(not isinstance(k, bytes) or len(k) != 32 for k in keys):
        raise WebhookKeysError("Ed25519 public keys are 32 bytes each, and one is needed")
    return keys


@attrs.frozen
class WebhookKeys:
    """fal's webhook public keys (raw 32-byte Ed25519 keys), as read from its JWKS.

    Usage::

        keys = WebhookKeys.from_jwks(json.loads(jwks_bytes))
        event = verify(request.headers, body, jwks=keys)
    """

    keys: tuple[bytes, ...] = attrs.field(converter=_raw_keys)

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any] | bytes | str) -> WebhookKeys:
        """The Ed25519 keys of a JWKS document; keys of other kinds are skipped.

        Raises:
            WebhookKeysError: not a JWKS, or it holds no usable Ed25519 key.
        """
        if isinstance(jwks, bytes | str):
            try:
                jwks = json.loads(jwks)
            except (ValueError, RecursionError):  # nested too deep for json is not JSON to us
                raise WebhookKeysError("fal's JWKS is not JSON") from None
        entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
        if not isinstance(entries, list):
            raise WebhookKeysError("fal's JWKS has no 'keys' list")
        found = []
        for entry in entries:
            if not isinstance(entry, Mapping) or entry.get("kty") != "OKP":
                continue
            if entry.get("crv") != "Ed25519" or not isinstance(entry.get("x"), str):
                continue
            try:
                raw = _b64url(entry["x"])
            except (binascii.Error, ValueError):
                continue
            if len(raw) == 32:
                found.append(raw)
        if not found:
            raise WebhookKeysError("fal's JWKS holds no Ed25519 key")
        return cls(list(dict.fromkeys(found)))

    def __repr__(self) -> str:
        return f"WebhookKeys({len(self.keys)} keys)"

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """True when one of the keys verifies ``signature`` over ``message``."""
        return any(_verifies(key, message, signature) for key in self.keys)


def _verifies(key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_message(request_id: str, user_id: str, timestamp: str, raw_body: bytes) -> bytes:
    """The bytes fal signs for one delivery."""
    digest = hashlib.sha256(raw_body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive; aiohttp's headers are not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None or not value.strip():
        raise WebhookSignatureError(f"the delivery has no {name} header")
    return value.strip()


def _timestamp(text: str, now: float, tolerance: float, request_id: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise WebhookSignatureError(
            f"X-Fal-Webhook-Timestamp is not unix seconds: {text[:20]!r}", request_id=request_id
        )
    stamp = int(text)
    if abs(now - stamp) > tolerance:
        when = "long ago (a replay?)" if stamp < now else "in the future"
        raise WebhookTimestampError(
            f"the delivery was signed {abs(now - stamp):.0f} s {when}; at most "
            f"{tolerance:g} s is accepted",
            timestamp=stamp,
            now=now,
            request_id=request_id,
        )
    return stamp


def _signature(text: str, request_id: str) -> bytes:
    try:
        signature = bytes.fromhex(text)
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise WebhookSignatureError(
            "X-Fal-Webhook-Signature is not 64 bytes of hex", request_id=request_id
        )
    return signature


def check_headers(
    headers: Mapping[str, str], *, now: float | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[str, str, str, int, bytes]:
    """The checks that need no body: the four headers present, the timestamp in its window,
    the signature 64 bytes of hex. Returns (request id, user id, timestamp as sent, as
    seconds, signature), so an unsigned delivery is refused before its body is read.

    Raises:
        WebhookSignatureError: a header is missing or malformed.
        WebhookTimestampError: signed more than ``tolerance`` seconds from ``now``.
    """
    if not (isinstance(tolerance, int | float) and 0 <= tolerance < math.inf):
        raise ValueError(f"tolerance must be finite seconds >= 0, got {tolerance!r}")
    request_id, user_id, stamp_text, sig_text = (_header(headers, h) for h in HEADERS)
    stamp = _timestamp(stamp_text, time.time() if now is None else now, tolerance, request_id)
    return request_id, user_id, stamp_text, stamp, _signature(sig_text, request_id)


def check_signature(
    headers: Mapping[str, str],
    raw_body: bytes,
    keys: WebhookKeys,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_body: int = DEFAULT_MAX_BODY,
) -> tuple[str, str, int]:
    """Check the size, headers, timestamp and signature; return (request id, user id, time).

    Raises:
        WebhookPayloadError: the body is larger than ``max_body``.
        WebhookSignatureError: a header is missing or malformed.
        WebhookTimestampError: signed more than ``tolerance`` seconds from ``now``.
        WebhookUnverifiedError: no key verifies the signature.
    """
    if not (isinstance(tolerance, int | float) and 0 <= tolerance < math.inf):
        raise ValueError(f"tolerance must be finite seconds >= 0, got {tolerance!r}")
    if len(raw_body) > max_body:
        raise WebhookPayloadError(
            f"the body is {len(raw_body)} bytes; at most {max_body} are accepted",
            http_status=413,
        )
    request_id, user_id, stamp_text, stamp, signature = check_headers(
        headers, now=now, tolerance=tolerance
    )
    if not keys.verifies(signed_message(request_id, user_id, stamp_text, raw_body), signature):
        raise WebhookUnverifiedError(
            "no key of fal's JWKS verifies this delivery's signature", request_id=request_id
        )
    return request_id, user_id, stamp


def parse_event(
    raw_body: bytes, request_id: str, user_id: str, stamp: int, tag: WebhookTag | None = None
) -> WebhookEvent:
    """The event in a verified body.

    Raises:
        WebhookPayloadError: the body is not a JSON object with a string ``status``.
        WebhookRequestIdError: the body's ``request_id`` is not the signed one.
    """
    try:
        body = json.loads(raw_body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise WebhookPayloadError("the body is not JSON", request_id=request_id) from None
    if not isinstance(body, dict):
        raise WebhookPayloadError("the body is not a JSON object", request_id=request_id)
    if body.get("request_id") != request_id:
        raise WebhookRequestIdError(
            f"the body names request {str(body.get('request_id'))[:60]!r}, the signature "
            f"{request_id!r}",
            request_id=request_id,
        )
    status = body.get("status")
    if not isinstance(status, str):
        raise WebhookPayloadError("the body has no string 'status'", request_id=request_id)
    gateway = body.get("gateway_request_id")
    return WebhookEvent(
        request_id=request_id,
        gateway_request_id=gateway if isinstance(gateway, str) else None,
        user_id=user_id,
        timestamp=stamp,
        status=status,
        payload=body.get("payload"),
        error=_text(body.get("error")),
        payload_error=_text(body.get("payload_error")),
        tag=tag,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def verify(
    headers: Mapping[str, str],
    raw_body: bytes,
    *,
    jwks: WebhookKeys | Mapping[str, Any] | Iterable[bytes],
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_body: int = DEFAULT_MAX_BODY,
) -> WebhookEvent:
    """Verify one webhook delivery and return its event.

    Args:
        headers: the delivery's HTTP headers (any mapping; names are matched without case).
        raw_body: the body exactly as received (the signature covers its bytes).
        jwks: fal's keys: a :class:`WebhookKeys`, a JWKS document, or raw 32-byte keys.
            For keys fetched and cached from fal, use :meth:`JwksCache.verify`.
        now: the current unix time (default: the clock).
        tolerance: seconds the signed timestamp may be from ``now``, either way.
        max_body: the largest body accepted, in bytes.

    Raises:
        WebhookPayloadError: the body is too large, not JSON or not fal's shape.
        WebhookSignatureError: a signature header is missing or malformed.
        WebhookUnverifiedError: no key verifies the signature (tampered, or forged).
        WebhookTimestampError: signed longer than ``tolerance`` ago, or in the future.
        WebhookRequestIdError: the body's request id is not the signed one.

    Usage::

        event = verify(request.headers, await request.read(), jwks=keys)
    """
    if isinstance(jwks, WebhookKeys):
        keys = jwks
    elif isinstance(jwks, Mapping):
        keys = WebhookKeys.from_jwks(jwks)
    else:
        keys = WebhookKeys(list(jwks))
    request_id, user_id, stamp = check_signature(
        headers, raw_body, keys, now=now, tolerance=tolerance, max_body=max_body
    )
    return parse_event(raw_body, request_id, user_id, stamp)
