"""Hostile-server modes: scheduled answers that are valid HTTP but test a client's defences."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from fal_edit_async.emulator import Emulator, Faults

from .emu_helpers import edit_input, get_json, submit


async def completed_job(emu: Emulator, http: aiohttp.ClientSession, **body: Any) -> dict[str, Any]:
    """Submit an edit and wait until it completed; return the submit answer."""
    job = await submit(http, emu, edit_input(**body))
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    return job


async def test_redirect_and_echo_key(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A redirect answers 302 to the location; echo_key quotes the Authorization header."""
    job = await completed_job(emu, http)
    emu.schedule_fault("status", "redirect", location="http://elsewhere.invalid/x")
    async with http.get(job["status_url"], allow_redirects=False) as resp:
        assert (302, "http://elsewhere.invalid/x") == (resp.status, resp.headers["Location"])
    emu.schedule_fault("result", "echo_key")
    status, body, _ = await get_json(http, job["response_url"])
    assert 401 == status
    assert emu.api_key in body["detail"]


async def test_foreign_urls_on_submit(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """foreign_urls puts every job URL of the submit answer on another origin."""
    emu.schedule_fault("submit", "foreign_urls", location="http://other.invalid:9")
    job = await submit(http, emu)
    for name in ("status_url", "response_url", "cancel_url"):
        assert job[name].startswith("http://other.invalid:9/requests/" + job["request_id"])


@pytest.mark.parametrize("route", ["status", "result"])
async def test_invalid_json(emu: Emulator, http: aiohttp.ClientSession, route: str) -> None:
    """invalid_json answers a JSON content type with a body that does not parse."""
    job = await completed_job(emu, http)
    emu.schedule_fault(route, "invalid_json")
    url = job["status_url"] if route == "status" else job["response_url"]
    async with http.get(url) as resp:
        assert "application/json" == resp.content_type
        with pytest.raises(ValueError):
            json.loads(await resp.read())


async def test_unknown_status_then_real(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """unknown_status sends an unknown status value once, with 202, then the real one."""
    job = await completed_job(emu, http)
    emu.schedule_fault("status", "unknown_status")
    first = await get_json(http, job["status_url"])
    second = await get_json(http, job["status_url"])
    assert (202, "PAUSED_FOR_MAINTENANCE") == (first[0], first[1]["status"])
    assert (200, "COMPLETED") == (second[0], second[1]["status"])


async def test_unknown_fields(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """unknown_fields adds fields to the status, its log lines, the result and its images."""
    job = await completed_job(emu, http)
    emu.schedule_fault("status", "unknown_fields")
    emu.schedule_fault("result", "unknown_fields")
    _, status, _ = await get_json(http, job["status_url"] + "?logs=1")
    _, result, _ = await get_json(http, job["response_url"])
    assert "x_future_field" in status
    assert all("labels" in entry for entry in status["logs"])
    assert 42 == result["seed"]
    assert all("blurhash" in image for image in result["images"])


@pytest.mark.parametrize(
    ("kind", "count"), [("zero_images", 0), ("extra_images", 6), ("hostile_names", 2)]
)
async def test_result_images(
    emu: Emulator, http: aiohttp.ClientSession, kind: str, count: int
) -> None:
    """A result with no images, three times as many, or file names that climb out."""
    job = await completed_job(emu, http, num_images=2)
    emu.schedule_fault("result", kind)
    _, result, _ = await get_json(http, job["response_url"])
    assert count == len(result["images"])
    if kind == "hostile_names":
        assert ["../../escape.png", "/tmp/absolute.png"] == [
            image["file_name"] for image in result["images"]
        ]


@pytest.mark.parametrize("kind", ["sse_split", "sse_crlf", "sse_noise", "sse_hostile"])
async def test_sse_framings_carry_the_same_events(
    emu: Emulator, http: aiohttp.ClientSession, kind: str
) -> None:
    """Each hostile framing still ends with a COMPLETED event, framed as asked."""
    job = await completed_job(emu, http)
    emu.schedule_fault("stream", kind)
    async with http.get(job["status_url"] + "/stream") as resp:
        body = await resp.read()
    assert (b"\r\n" in body) == (kind in ("sse_crlf", "sse_hostile"))
    assert (b"retry: 3000" in body) == (kind in ("sse_noise", "sse_hostile"))
    data = [
        line.removeprefix(b"data: ")
        for line in body.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    assert "COMPLETED" == json.loads(b"\n".join(data))["status"]


async def test_sse_payload_kinds(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """On a stream, invalid_json and unknown_status come first, then the real event."""
    job = await completed_job(emu, http)
    for kind, first in (
        ("invalid_json", b'data: {"status": "IN_PROGRESS", "logs": [{'),
        ("unknown_status", b'data: {"status": "PAUSED_FOR_MAINTENANCE"'),
    ):
        emu.schedule_fault("stream", kind)
        async with http.get(job["status_url"] + "/stream") as resp:
            events = (await resp.read()).split(b"\n\n")
        assert events[0].startswith(first), kind
        assert b'"COMPLETED"' in events[1]


async def test_hostile_downloads(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Downloads can come as text/html, with 1 MiB of junk after the file, or as a redirect."""
    job = await completed_job(emu, http)
    _, result, _ = await get_json(http, job["response_url"])
    image = result["images"][0]
    emu.schedule_fault("download", "wrong_content_type")
    emu.schedule_fault("download", "oversized")
    emu.schedule_fault("download", "redirect", location="http://elsewhere.invalid/f.png")
    async with aiohttp.ClientSession() as cdn:
        async with cdn.get(image["url"]) as resp:
            assert "text/html" == resp.content_type
        async with cdn.get(image["url"]) as resp:
            assert resp.content_length is None
            assert image["file_size"] + 1024 * 1024 == len(await resp.read())
        async with cdn.get(image["url"], allow_redirects=False) as resp:
            assert 302 == resp.status
    assert 3 == sum(
        emu.counters.faults_injected[k] for k in ("wrong_content_type", "oversized", "redirect")
    )


@pytest.mark.parametrize(
    ("route", "kind", "options"),
    [
        ("status", "zero_images", {}),
        ("download", "sse_split", {}),
        ("status", "redirect", {}),
        ("job", "redirect", {"location": "http://x.invalid"}),
    ],
)
def test_hostile_kinds_only_on_their_routes(route: str, kind: str, options: dict[str, Any]) -> None:
    """A hostile kind on a route it does not apply to, or a redirect without a location, fails."""
    with pytest.raises(ValueError):
        Emulator().schedule_fault(route, kind, **options)


async def test_routes_by_kind_overrides_routes() -> None:
    """routes_by_kind sends one kind to its own routes and leaves the others on ``routes``."""
    faults = Faults(
        seed=3,
        routes={"status"},
        server_error=1.0,
        ingress_error=1.0,
        routes_by_kind={"ingress_error": {"submit"}},
    )
    async with Emulator(faults=faults, fast_images=True) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(emu.url_for("a/b"), json=edit_input()) as resp:
                assert (502, "text/html") == (resp.status, resp.content_type)
            async with http.get(emu.queue_url + "/a/b/requests/x/status") as resp:
                assert 500 == resp.status
    with pytest.raises(ValueError, match="unknown HTTP fault kinds"):
        Faults(routes_by_kind={"stream_drop": {"stream"}})
