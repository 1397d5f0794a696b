"""The webhook receiver app against the emulator's signed deliveries, over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from fal_edit_async import WebhookEvent
from fal_edit_async.emulator import Emulator, Faults
from fal_edit_async.webhooks import STATISTICS, JwksCache, ReceiverStatistics, create_app

from .conftest import make_png

ENDPOINT = "fal-ai/gpt-image-1/edit-image"


@asynccontextmanager
async def _receiver(
    emu: Emulator, on_event: Callable[[WebhookEvent], Awaitable[None]], max_body: int = 2**20
) -> AsyncIterator[tuple[str, ReceiverStatistics]]:
    jwks = JwksCache(emu.jwks_url)
    app = create_app(jwks=jwks, on_event=on_event, path="/hook", max_body=max_body)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", app[STATISTICS]
    finally:
        await runner.cleanup()
        await jwks.aclose()


async def _submit(emu: Emulator, hook: str, n: int = 1) -> list[str]:
    import base64

    uri = "data:image/png;base64," + base64.b64encode(make_png()).decode()
    ids = []
    headers = {"Authorization": f"Key {emu.api_key}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(n):
            body = {"prompt": f"p{i}", "image_urls": [uri]}
            url = emu.url_for(ENDPOINT)
            async with http.post(url, json=body, params={"fal_webhook": hook}) as resp:
                assert 200 == resp.status
                ids.append((await resp.json())["request_id"])
    return ids


async def test_tampered_stale_and_duplicate_deliveries_record_one_event() -> None:
    """Per job: the tampered copy and the replay are refused (counted), the duplicate is
    answered 200 but handed over no second time."""
    events: list[WebhookEvent] = []

    async def on_event(event: WebhookEvent) -> None:
        events.append(event)

    faults = Faults(webhook_duplicate=1, webhook_tampered=1, webhook_stale=1)
    async with Emulator(fast_images=True, webhook_retry_base=0, faults=faults) as emu:
        async with _receiver(emu, on_event) as (hook, stats):
            ids = await _submit(emu, hook, 3)
            await emu.wait_until(lambda: len(emu.webhook_log) == 12)
    assert sorted(ids) == sorted(e.request_id for e in events)
    assert all(e.ok and e.payload["images"] for e in events)
    assert (12, 3, 3) == (stats.received, stats.accepted, stats.duplicates)
    assert {"WebhookUnverifiedError": 3, "WebhookTimestampError": 3} == dict(stats.rejected)
    kinds = sorted((kind, status) for _, kind, status in emu.webhook_log)
    assert [("duplicate", 200)] * 3 + [("genuine", 200)] * 3 == kinds[:6]
    assert {("stale", 400), ("tampered", 401)} == set(kinds[6:])


async def test_an_event_the_callback_fails_on_is_taken_on_fals_retry() -> None:
    """A callback that raises gets the delivery answered 500; fal's retry is handed over."""
    calls: list[str] = []

    async def on_event(event: WebhookEvent) -> None:
        calls.append(event.request_id)
        if len(calls) == 1:
            raise RuntimeError("database down")

    async with Emulator(fast_images=True, webhook_retry_base=0) as emu:
        async with _receiver(emu, on_event) as (hook, stats):
            (rid,) = await _submit(emu, hook)
            await emu.wait_webhooks(1)
    assert [rid, rid] == calls
    assert (1, 1) == (stats.failures, stats.accepted)
    assert [500, 200] == [status for _, _, status in emu.webhook_log]


async def test_a_delivery_that_is_not_json_or_too_large_gets_a_4xx() -> None:
    """Unsigned junk is refused before anything else; nothing reaches the callback."""
    events: list[WebhookEvent] = []

    async def on_event(event: WebhookEvent) -> None:
        events.append(event)

    async with Emulator(fast_images=True) as emu:
        receiving = _receiver(emu, on_event, max_body=1000)
        async with receiving as (hook, stats), aiohttp.ClientSession() as http:
            async with http.post(hook, data=b"not json") as resp:
                assert 401 == resp.status
            async with http.post(hook, data=b"x" * 1001) as resp:
                assert 413 == resp.status
    assert [] == events
    assert {"WebhookSignatureError": 1, "WebhookPayloadError": 1} == dict(stats.rejected)
