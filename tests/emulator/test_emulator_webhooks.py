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
