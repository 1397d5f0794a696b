"""Webhook verification: signatures made by an independent Ed25519 (PyNaCl, libsodium), the
JWKS cache and key rotation, replays, and the receiver's de-duplication."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from nacl.signing import SigningKey

from fal_edit_async import (
    WebhookError,
    WebhookEvent,
    WebhookKeysError,
    WebhookPayloadError,
    WebhookRequestIdError,
    WebhookSignatureError,
    WebhookTag,
    WebhookTimestampError,
    WebhookUnverifiedError,
)
from fal_edit_async._webhook_models import read_tag, tag_url
from fal_edit_async.emulator import _ed25519
from fal_edit_async.webhooks import JwksCache, WebhookKeys, verify

NOW = 1_800_000_000


def _jwk(key: SigningKey) -> dict[str, str]:
    x = base64.urlsafe_b64encode(bytes(key.verify_key)).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x}


def _jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [_jwk(k) for k in keys]}


def _body(request_id: str = "req-1", **extra: Any) -> bytes:
    payload = {"images": [{"url": "https://v3.fal.media/files/x.png"}]}
    body = {"request_id": request_id, "gateway_request_id": request_id, "status": "OK"}
    return json.dumps({**body, "payload": payload, **extra}).encode()


def _signed(
    key: SigningKey,
    body: bytes,
    *,
    request_id: str = "req-1",
    user_id: str = "user-7",
    timestamp: int = NOW,
) -> dict[str, str]:
    """fal's four headers, signed by libsodium (not the library under test)."""
    digest = hashlib.sha256(body).hexdigest()
    message = f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(timestamp),
        "X-Fal-Webhook-Signature": key.sign(message).signature.hex(),
    }


KEY = SigningKey(b"\x01" * 32)
ROTATED = SigningKey(b"\x02" * 32)
OTHER = SigningKey(b"\x03" * 32)


def test_a_delivery_signed_by_an_independent_ed25519_verifies() -> None:
    """A signature libsodium made verifies, and the event carries the signed body."""
    body = _body()
    event = verify(_signed(KEY, body), body, jwks=_jwks(KEY), now=NOW)
    assert (
        WebhookEvent(
            request_id="req-1",
            gateway_request_id="req-1",
            user_id="user-7",
            timestamp=NOW,
            status="OK",
            payload={"images": [{"url": "https://v3.fal.media/files/x.png"}]},
        )
        == event
    )
    assert event.ok


def test_the_emulators_signer_meets_rfc_8032() -> None:
    """The emulator's pure-Python Ed25519 gives RFC 8032's test 1, and libsodium's answers."""
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    assert (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
        "39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    ) == _ed25519.sign(seed, b"").hex()
    assert SigningKey(seed).sign(b"fal").signature == _ed25519.sign(seed, b"fal")


def test_a_key_rotated_into_the_jwks_verifies() -> None:
    """No key id is sent: every key of the set is tried, the rotated-in one included."""
    body = _body()
    assert verify(_signed(ROTATED, body), body, jwks=_jwks(KEY, ROTATED), now=NOW).ok


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda b: b.replace(b'"OK"', b'"ERROR"'), id="status-flipped"),
        pytest.param(lambda b: b + b" ", id="trailing-space"),
        pytest.param(lambda b: b.replace(b"x.png", b"y.png"), id="output-url"),
    ],
)
def test_a_tampered_body_is_refused(tamper: Callable[[bytes], bytes]) -> None:
    """The signature covers every byte of the body."""
    body = _body()
    with pytest.raises(WebhookUnverifiedError):
        verify(_signed(KEY, body), tamper(body), jwks=_jwks(KEY), now=NOW)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("X-Fal-Webhook-Request-Id", "req-2", id="request-id"),
        pytest.param("X-Fal-Webhook-User-Id", "user-8", id="user-id"),
        pytest.param("X-Fal-Webhook-Timestamp", str(NOW + 1), id="timestamp"),
    ],
)
def test_each_signed_header_is_covered(header: str, value: str) -> None:
    """Changing any signed header breaks the signature."""
    body = _body()
    headers = _signed(KEY, body) | {header: value}
    with pytest.raises(WebhookError):
        verify(headers, body, jwks=_jwks(KEY), now=NOW)


def test_a_key_not_in_the_set_is_refused() -> None:
    """A genuine Ed25519 signature by someone else's key is not fal's."""
    body = _body()
    with pytest.raises(WebhookUnverifiedError) as caught:
        verify(_signed(OTHER, body), body, jwks=_jwks(KEY, ROTATED), now=NOW)
    assert 401 == caught.value.http_status


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        pytest.param(-300, True, id="300s-old"),
        pytest.param(-301, False, id="301s-old-replay"),
        pytest.param(300, True, id="300s-ahead"),
        pytest.param(301, False, id="301s-ahead"),
    ],
)
def test_the_timestamp_window_is_300_seconds_either_way(offset: int, accepted: bool) -> None:
    """A replay older than 300 s, or a delivery from the future, is refused."""
    body = _body()
    headers = _signed(KEY, body, timestamp=NOW + offset)
    if accepted:
        assert verify(headers, body, jwks=_jwks(KEY), now=NOW).timestamp == NOW + offset
    else:
        with pytest.raises(WebhookTimestampError):
            verify(headers, body, jwks=_jwks(KEY), now=NOW)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"X-Fal-Webhook-Signature": None}, id="no-signature"),
        pytest.param({"X-Fal-Webhook-User-Id": None}, id="no-user"),
        pytest.param({"X-Fal-Webhook-Signature": "zz" * 64}, id="not-hex"),
        pytest.param({"X-Fal-Webhook-Signature": "ab" * 63}, id="short"),
        pytest.param({"X-Fal-Webhook-Timestamp": "1.8e9"}, id="timestamp-not-digits"),
    ],
)
def test_missing_or_malformed_headers_are_refused(change: dict[str, str | None]) -> None:
    """Each header is required and must be well formed."""
    body = _body()
    headers = {k: v for k, v in (_signed(KEY, body) | change).items() if v is not None}
    with pytest.raises(WebhookSignatureError):
        verify(headers, body, jwks=_jwks(KEY), now=NOW)


def test_header_names_match_without_case() -> None:
    """A plain dict of lower-case names (as ASGI gives them) works."""
    body = _body()
    headers = {k.lower(): v for k, v in _signed(KEY, body).items()}
    assert verify(headers, body, jwks=_jwks(KEY), now=NOW).ok


def test_a_signed_body_that_is_not_json_is_refused() -> None:
    """Verified bytes that are not a JSON object are still no event."""
    for body in (b"not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(WebhookPayloadError):
            verify(_signed(KEY, body), body, jwks=_jwks(KEY), now=NOW)


def test_a_body_naming_another_request_is_refused() -> None:
    """The body's request id must be the signed one."""
    body = _body("req-other")
    with pytest.raises(WebhookRequestIdError):
        verify(_signed(KEY, body, request_id="req-1"), body, jwks=_jwks(KEY), now=NOW)


def test_an_oversized_body_is_refused_before_anything_else() -> None:
    """Too large is a 413, whatever the signature."""
    body = _body(padding="x" * 2000)
    with pytest.raises(WebhookPayloadError) as caught:
        verify(_signed(KEY, body), body, jwks=_jwks(KEY), now=NOW, max_body=1000)
    assert 413 == caught.value.http_status


def test_the_jwks_keeps_only_ed25519_keys() -> None:
    """Other key types are skipped; a set without Ed25519 keys is an error."""
    rsa = {"kty": "RSA", "n": "AQAB", "e": "AQAB"}
    bad = {"kty": "OKP", "crv": "Ed25519", "x": "short"}
    keys = WebhookKeys.from_jwks({"keys": [rsa, bad, _jwk(KEY), _jwk(KEY)]})
    assert (bytes(KEY.verify_key),) == keys.keys
    for document in ({"keys": [rsa]}, {"nokeys": 1}, b"not json", {"keys": "x"}):
        with pytest.raises(WebhookKeysError):
            WebhookKeys.from_jwks(document)  # type: ignore[arg-type]


class _Jwks:
    """A JWKS URL whose answer a test changes (fal rotating keys), counting fetches."""

    def __init__(self, *keys: SigningKey) -> None:
        self.document: bytes = json.dumps(_jwks(*keys)).encode()
        self.fetches = 0
        self.fail = False

    async def __call__(self, url: str) -> bytes:
        self.fetches += 1
        if self.fail:
            raise OSError("unreachable")
        return self.document


async def test_the_cache_refetches_once_when_a_rotated_key_signs() -> None:
    """A delivery signed by a key fal added since the last fetch verifies after one refetch."""
    clock = [0.0]
    source = _Jwks(KEY)
    cache = JwksCache(fetch=source, clock=lambda: clock[0], min_refresh=60)
    body = _body()
    assert (await cache.verify(_signed(KEY, body), body, now=NOW)).ok
    source.document = json.dumps(_jwks(KEY, ROTATED)).encode()
    clock[0] = 120.0
    assert (await cache.verify(_signed(ROTATED, body), body, now=NOW)).ok
    assert 2 == source.fetches


async def test_forged_deliveries_do_not_turn_into_a_flood_of_fetches() -> None:
    """Within ``min_refresh``, a signature no key verifies is refused without a fetch."""
    clock = [100.0]
    source = _Jwks(KEY)
    cache = JwksCache(fetch=source, clock=lambda: clock[0], min_refresh=60)
    body = _body()
    for _ in range(20):
        with pytest.raises(WebhookUnverifiedError):
            await cache.verify(_signed(OTHER, body), body, now=NOW)
        clock[0] += 1
    assert 1 == source.fetches


async def test_the_cache_expires_after_its_ttl_and_keeps_keys_when_a_fetch_fails() -> None:
    """After ``ttl`` the set is fetched again; a failed fetch keeps the keys already held."""
    clock = [0.0]
    source = _Jwks(KEY)
    cache = JwksCache(fetch=source, clock=lambda: clock[0], ttl=3600)
    await cache.keys()
    clock[0] = 3600.0
    source.fail = True
    assert (bytes(KEY.verify_key),) == (await cache.keys()).keys
    assert 2 == source.fetches


async def test_no_keys_at_all_is_a_503_not_a_refusal() -> None:
    """When fal's keys cannot be had, the delivery is answered 5xx so fal retries it."""
    source = _Jwks(KEY)
    source.fail = True
    cache = JwksCache(fetch=source)
    body = _body()
    with pytest.raises(WebhookKeysError) as caught:
        await cache.verify(_signed(KEY, body), body, now=NOW)
    assert 503 == caught.value.http_status


async def test_concurrent_verifications_fetch_once() -> None:
    """Many deliveries at once, with an empty cache, make one fetch."""
    source = _Jwks(KEY)
    cache = JwksCache(fetch=source)
    body = _body()

    async def one() -> None:
        await cache.verify(_signed(KEY, body), body, now=NOW)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert 1 == source.fetches


def test_a_tag_is_read_back_only_with_its_hmac() -> None:
    """The URL is not signed by fal: the batch's own HMAC keeps a tag from being moved."""
    from urllib.parse import parse_qsl, urlsplit

    tag = WebhookTag(batch="b1", item="key@abc", attempt=2)
    url = tag_url("https://hooks.example/fal?x=1", tag, b"secret")
    query = dict(parse_qsl(urlsplit(url).query))
    assert "1" == query["x"]
    assert tag == read_tag(query, b"secret")
    assert read_tag(query, b"other secret") is None
    assert read_tag(query | {"fal_item": "another"}, b"secret") is None
    assert read_tag(query | {"fal_attempt": "3"}, b"secret") is None
    assert read_tag(query, None) is None
