"""The SSE status stream: format, incremental logs, and the end of the body (§5)."""

from __future__ import annotations

from typing import Any

import aiohttp

from fal_edit_async.emulator import Emulator

from .emu_helpers import sse_events, sse_items, submit


def stream_url(job: dict[str, Any], logs: bool = True) -> str:
    """The status stream URL of a submitted job."""
    return f"{job['status_url']}/stream?logs={int(logs)}"


async def test_events_carry_only_new_logs(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Each event carries the log lines new since the previous one; the body ends at COMPLETED."""
    emu.hold_jobs()
    job = await submit(http, emu)
    rid = job["request_id"]
    await emu.wait_jobs_held(1)
    async with http.get(stream_url(job)) as resp:
        assert "text/event-stream" == resp.content_type
        assert rid == resp.headers["x-fal-request-id"]
        items = sse_items(resp)
        kind, first = await anext(items)
        assert ("data", "IN_PROGRESS") == (kind, first["status"])
        assert 3 == len(first["logs"])
        assert {"request_id", "response_url", "status_url", "cancel_url"} <= first.keys()

        emu.add_log(rid, "halfway there", level="DEBUG")
        _, second = await anext(items)
        assert ["halfway there"] == [entry["message"] for entry in second["logs"]]
        assert "DEBUG" == second["logs"][0]["level"]

        emu.release_jobs()
        rest = [item async for kind, item in items if kind == "data"]
    assert ["COMPLETED"] == [event["status"] for event in rest]
    assert [] == rest[0]["logs"]
    assert "inference_time" in rest[0]["metrics"]
    assert 4 == len(emu.jobs[rid].logs)


async def test_queued_to_completed_without_logs(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """With logs off every event has ``logs: null``; states only move forward."""
    emu.hold_queue()
    job = await submit(http, emu)
    async with http.get(stream_url(job, logs=False)) as resp:
        items = sse_items(resp)
        _, first = await anext(items)
        assert ("IN_QUEUE", 0) == (first["status"], first["queue_position"])
        emu.release_queue()
        rest = [item async for kind, item in items if kind == "data"]
    states = [event["status"] for event in rest]
    assert "COMPLETED" == states[-1]
    assert set(states) <= {"IN_PROGRESS", "COMPLETED"}
    assert all(event["logs"] is None for event in rest)


async def test_logs_are_never_repeated(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Across a whole stream, each log line arrives exactly once."""
    emu.hold_queue()
    job = await submit(http, emu)
    async with http.get(stream_url(job)) as resp:
        await emu.wait_status_stream_open(job["request_id"])
        emu.release_queue()
        events = await sse_events(resp)
    messages = [entry["message"] for event in events for entry in event.get("logs") or []]
    assert [entry["message"] for entry in emu.jobs[job["request_id"]].logs] == messages


async def test_already_complete_gives_one_event(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A stream opened after completion sends one COMPLETED event with all logs, then ends."""
    job = await submit(http, emu)
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    async with http.get(stream_url(job)) as resp:
        events = await sse_events(resp)
    assert ["COMPLETED"] == [event["status"] for event in events]
    assert 3 == len(events[0]["logs"])


async def test_keepalive_comments() -> None:
    """An idle stream gets ``: keep-alive`` comments at the configured interval."""
    async with Emulator(keepalive_interval=0.02, fast_images=True) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            emu.hold_jobs()
            job = await submit(http, emu)
            async with http.get(stream_url(job)) as resp:
                items = sse_items(resp)
                assert "data" == (await anext(items))[0]
                assert ("comment", "keep-alive") == await anext(items)
                emu.release_jobs()
                assert "COMPLETED" == (await sse_events(resp))[-1]["status"]


async def test_cancel_ends_the_stream(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Cancelling a running job ends its stream with a client_cancelled COMPLETED event."""
    emu.hold_jobs()
    job = await submit(http, emu)
    async with http.get(stream_url(job)) as resp:
        await emu.wait_status_stream_open(job["request_id"])
        async with http.put(job["cancel_url"]) as cancel:
            assert 202 == cancel.status
        events = await sse_events(resp)
    assert "client_cancelled" == events[-1]["error_type"]
    assert 1 == emu.counters.streams_opened


async def test_open_streams_end_when_the_emulator_stops() -> None:
    """Stopping the emulator ends open streams promptly instead of waiting for them."""
    emu = await Emulator(fast_images=True).start()
    try:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            emu.hold_jobs()
            job = await submit(http, emu)
            async with http.get(stream_url(job)) as resp:
                await emu.wait_status_stream_open(job["request_id"])
                await emu.aclose()
                events = await sse_events(resp)
        assert "IN_PROGRESS" == events[0]["status"]
    finally:
        await emu.aclose()
