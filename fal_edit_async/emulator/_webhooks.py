"""Signed webhook deliveries, as fal sends them: Ed25519, a JWKS, retries, and faults.

When a job with a ``fal_webhook`` URL ends, the emulator POSTs
``{request_id, gateway_request_id, status, payload[, error][, payload_error]}`` to it,
signed as fal signs (``X-Fal-Webhook-Request-Id``, ``-User-Id``, ``-Timestamp``,
``-Signature``: hex Ed25519 over ``request_id\\nuser_id\\ntimestamp\\nsha256_hex(body)``)
with a key of its own, whose public half is in the JWKS it serves at
``<rest_url>/.well-known/jwks.json``. A delivery not answered 2xx within 15 s is retried,
``retries`` times, waiting ``retry_base`` seconds doubling up to 30 minutes (fal: 10 retries
over about 2 hours). Faults (``Faults`` rates or ``schedule_fault("webhook", kind)``):
``webhook_duplicate`` delivers the genuine delivery twice; ``webhook_tampered`` first sends a
copy whose body was altered after signing; ``webhook_stale`` first sends a genuine delivery
signed 400 s ago (a replay). The extra copies' answers are not retried.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from . import _ed25519
from ._faults import FaultPlan
from ._state import Counters, EmulatedJob

__all__ = ["WebhookSender", "WebhookSigner"]

_TIMEOUT = aiohttp.ClientTimeout(total=15)
_MAX_WAIT = 1800.0
_STALE_BY = 400  # seconds: older than fal's 300 s window


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class WebhookSigner:
    """The emulator's webhook keys: signs with the newest, publishes all in its JWKS."""

    def __init__(self, seed: bytes | None = None, user_id: str | None = None) -> None:
        self.user_id = user_id or "emulator-user-" + secrets.token_hex(4)
        self._seeds: list[bytes] = []
        self.rotate(seed)

    def rotate(self, seed: bytes | None = None, *, keep_old: bool = True) -> bytes:
        """Sign with a new key from now on; the old ones stay in the JWKS unless not kept.

        Returns the new public key.
        """
        seed = seed or secrets.token_bytes(32)
        self._seeds = [*self._seeds, seed] if keep_old else [seed]
        return _ed25519.public_key(seed)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: one OKP/Ed25519 key per seed (no ``kid`` is relied on)."""
        keys = []
        for seed in self._seeds:
            public = _ed25519.public_key(seed)
            keys.append(
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(public),
                    "kid": hashlib.sha256(public).hexdigest()[:16],
                    "use": "sig",
                }
            )
        return {"keys": keys}

    def headers(self, request_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """The four signature headers of one delivery."""
        stamp = str(timestamp)
        digest = hashlib.sha256(body).hexdigest()
        message = f"{request_id}\n{self.user_id}\n{stamp}\n{digest}".encode()
        signature = _ed25519.sign(self._seeds[-1], message)
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": stamp,
            "X-Fal-Webhook-Signature": signature.hex(),
        }


def webhook_body(job: EmulatedJob) -> dict[str, Any]:
    """What fal POSTs when ``job`` ended: ``OK`` for an HTTP 200 result, else ``ERROR``."""
    ok = job.result_status == 200
    body: dict[str, Any] = {
        "request_id": job.request_id,
        "gateway_request_id": job.request_id,
        "status": "OK" if ok else "ERROR",
        "payload": job.result_body,
    }
    if not ok:
        body["error"] = f"Invalid status code: {job.result_status}"
    return body


class WebhookSender:
    """Delivers each ended job's webhook, signed, with retries and the webhook faults.

    Args:
        counters: the emulator's counters (``webhooks_sent``, ``webhook_failures``...).
        plan: the fault plan (``webhook_duplicate``, ``webhook_tampered``, ``webhook_stale``).
        retries: deliveries after the first one that failed.
        retry_base: seconds before the first retry; doubles each time, up to 30 minutes.
        notify: called after every delivery attempt (wakes the emulator's waiters).
    """

    def __init__(
        self,
        counters: Counters,
        plan: FaultPlan,
        *,
        retries: int = 10,
        retry_base: float = 15.0,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self.signer = WebhookSigner()
        self.counters = counters
        self.plan = plan
        self.retries = retries
        self.retry_base = retry_base
        self.notify = notify
        #: Every delivery POSTed, genuine or not: (request id, kind, HTTP status or 0).
        self.log: list[tuple[str, str, int]] = []

    async def deliver(self, session: aiohttp.ClientSession, job: EmulatedJob) -> None:
        """POST the job's webhook until it is answered 2xx or the retries run out."""
        assert job.webhook_url is not None
        body = json.dumps(webhook_body(job)).encode()
        if self.plan.take("webhook_tampered") is not None:
            await self._extra(session, job, self._tampered(job), "tampered", int(time.time()))
        if self.plan.take("webhook_stale") is not None:
            await self._extra(session, job, body, "stale", int(time.time()) - _STALE_BY)
        wait = self.retry_base
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(wait)
                wait = min(wait * 2, _MAX_WAIT)
            status = await self._post(session, job, body, int(time.time()), "genuine")
            if 200 <= status < 300:
                self.counters.webhooks_sent += 1
                if self.plan.take("webhook_duplicate") is not None:
                    await self._post(session, job, body, int(time.time()), "duplicate")
                break
            self.counters.webhook_failures += 1
            self.notify()
        else:
            self.counters.webhooks_abandoned += 1
        self.notify()

    def _tampered(self, job: EmulatedJob) -> bytes:
        forged = webhook_body(job)
        forged["status"] = "ERROR" if forged["status"] == "OK" else "OK"
        forged["payload"] = {"images": [{"url": "https://attacker.invalid/x.png"}]}
        return json.dumps(forged).encode()

    async def _extra(
        self,
        session: aiohttp.ClientSession,
        job: EmulatedJob,
        body: bytes,
        kind: str,
        stamp: int,
    ) -> None:
        genuine = json.dumps(webhook_body(job)).encode()
        # A tampered copy carries the genuine body's signature; a stale one its own, old.
        signed = genuine if kind == "tampered" else body
        headers = self.signer.headers(job.request_id, signed, stamp)
        await self._send(session, job, body, headers, kind)

    async def _post(
        self, session: aiohttp.ClientSession, job: EmulatedJob, body: bytes, stamp: int, kind: str
    ) -> int:
        headers = self.signer.headers(job.request_id, body, stamp)
        return await self._send(session, job, body, headers, kind)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        job: EmulatedJob,
        body: bytes,
        headers: dict[str, str],
        kind: str,
    ) -> int:
        assert job.webhook_url is not None
        headers = {**headers, "Content-Type": "application/json"}
        self.counters.webhook_posts[kind] += 1
        try:
            async with session.post(
                job.webhook_url, data=body, headers=headers, timeout=_TIMEOUT
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status = 0
        job.webhook_status = status
        self.log.append((job.request_id, kind, status))
        self.notify()
        return status
