"""Webhooks: a POST of the result to ``fal_webhook`` when the job completes (§10)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fal_edit_async.emulator import Emulator

from .emu_helpers import edit_input, get_json, submit


class Receiver:
    """A tiny webhook receiver that records each delivery."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        """Record the JSON body and answer 200."""
        self.deliveries.append(await request.json())
        self.arrived.set()
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A running webhook receiver on loopback."""
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


async def test_webhook_on_success(
    emu: Emulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A finished job POSTs status OK and the result as payload to its webhook."""
    job = await submit(http, emu, params={"fal_webhook": receiver.url})
    await receiver.arrived.wait()
    (delivery,) = receiver.deliveries
    _, result, _ = await get_json(http, job["response_url"])
    assert {
        "request_id": job["request_id"],
        "gateway_request_id": job["request_id"],
        "status": "OK",
        "payload": result,
    } == delivery
    await emu.wait_until(lambda: emu.counters.webhooks_sent == 1)
    assert 200 == emu.jobs[job["request_id"]].webhook_status


async def test_webhook_on_error(
    emu: Emulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A failed job POSTs status ERROR, the error line and the error body."""
    await submit(http, emu, edit_input(prompt=" "), params={"fal_webhook": receiver.url})
    await receiver.arrived.wait()
    (delivery,) = receiver.deliveries
    assert ("ERROR", "Invalid status code: 422") == (delivery["status"], delivery["error"])
    assert ["body", "prompt"] == delivery["payload"]["detail"][0]["loc"]


async def test_unreachable_webhook_is_counted(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A webhook that cannot be delivered is counted as a failure; the job is unaffected."""
    job = await submit(http, emu, params={"fal_webhook": "http://127.0.0.1:9/hook"})
    await emu.wait_until(lambda: emu.counters.webhook_failures == 1)
    assert 200 == (await get_json(http, job["response_url"]))[0]


class SignedReceiver(Receiver):
    """Records each delivery's raw body and headers; answers from a script of statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.raw: list[tuple[bytes, dict[str, str]]] = []
        self.statuses = statuses or []

    async def handle(self, request: web.Request) -> web.Response:
        """Record the raw delivery; answer the next scripted status (200 when none left)."""
        self.raw.append((await request.read(), dict(request.headers)))
        self.arrived.set()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


async def _serve(hook: Receiver) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    return runner


def _verifies(jwks: dict[str, Any], body: bytes, headers: dict[str, str]) -> bool:
    """Checked with libsodium, independently of the emulator's signer and the client."""
    import base64
    import hashlib

    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    names = ("Request-Id", "User-Id", "Timestamp")
    rid, uid, stamp = (headers[f"X-Fal-Webhook-{n}"] for n in names)
    message = f"{rid}\n{uid}\n{stamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    signature = bytes.fromhex(headers["X-Fal-Webhook-Signature"])
    for key in jwks["keys"]:
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            VerifyKey(raw).verify(message, signature)
        except BadSignatureError:
            continue
        return True
    return False


async def test_deliveries_are_signed_with_a_key_of_the_served_jwks() -> None:
    """The JWKS is on the REST origin without credentials, and it verifies the signature."""
    hook = SignedReceiver()
    async with Emulator(fast_images=True) as emu, aiohttp.ClientSession() as anon:
        runner = await _serve(hook)
        try:
            async with anon.get(emu.jwks_url) as resp:
                assert 200 == resp.status
                jwks = await resp.json()
            headers = {"Authorization": f"Key {emu.api_key}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                job = await submit(http, emu, params={"fal_webhook": hook.url})
            await emu.wait_webhooks(1)
            ((body, sent),) = hook.raw
            assert job["request_id"] == sent["X-Fal-Webhook-Request-Id"]
            assert _verifies(jwks, body, sent)
            assert not _verifies(jwks, body + b" ", sent)
            emu.rotate_webhook_key()
            assert 2 == len(emu.webhook_jwks["keys"])
        finally:
            await runner.cleanup()


async def test_a_refused_delivery_is_retried_until_taken() -> None:
    """A delivery answered 5xx (or not at all) is sent again, each time newly signed."""
    hook = SignedReceiver([500, 503])
    async with Emulator(fast_images=True, webhook_retry_base=0) as emu:
        runner = await _serve(hook)
        try:
            headers = {"Authorization": f"Key {emu.api_key}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                await submit(http, emu, params={"fal_webhook": hook.url})
            await emu.wait_webhooks(1)
            assert 3 == len(hook.raw)
            assert (1, 2) == (emu.counters.webhooks_sent, emu.counters.webhook_failures)
            assert all(_verifies(emu.webhook_jwks, b, h) for b, h in hook.raw)
        finally:
            await runner.cleanup()


async def test_retries_run_out() -> None:
    """After ``webhook_retries`` more refusals the delivery is abandoned, and counted."""
    hook = SignedReceiver([500] * 10)
    async with Emulator(fast_images=True, webhook_retry_base=0, webhook_retries=2) as emu:
        runner = await _serve(hook)
        try:
            headers = {"Authorization": f"Key {emu.api_key}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                await submit(http, emu, params={"fal_webhook": hook.url})
            await emu.wait_until(lambda: emu.counters.webhooks_abandoned == 1)
            assert 3 == len(hook.raw)
        finally:
            await runner.cleanup()


@pytest.mark.parametrize(
    ("kind", "genuine"),
    [
        pytest.param("webhook_duplicate", [True, True], id="duplicate"),
        pytest.param("webhook_tampered", [False, True], id="tampered-first"),
        pytest.param("webhook_stale", [True, True], id="stale-first"),
    ],
)
async def test_webhook_faults(kind: str, genuine: list[bool]) -> None:
    """Duplicates repeat the genuine delivery; a tampered copy fails to verify; a stale one
    verifies but was signed 400 s ago."""
    import time

    hook = SignedReceiver()
    async with Emulator(fast_images=True, webhook_retry_base=0) as emu:
        emu.schedule_fault("webhook", kind)
        runner = await _serve(hook)
        try:
            headers = {"Authorization": f"Key {emu.api_key}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                await submit(http, emu, params={"fal_webhook": hook.url})
            await emu.wait_until(lambda: len(hook.raw) == 2)
            assert genuine == [_verifies(emu.webhook_jwks, b, h) for b, h in hook.raw]
            stamps = [int(h["X-Fal-Webhook-Timestamp"]) for _, h in hook.raw]
            old = [time.time() - s > 300 for s in stamps]
            assert [kind == "webhook_stale", False] == old
        finally:
            await runner.cleanup()
