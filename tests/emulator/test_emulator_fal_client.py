"""Conformance: the official fal_client (AsyncClient) runs against the emulator unchanged.

fal_client is pointed at the emulator with recipe A of the protocol reference (§2.3): its
module-level URL constants are patched, and it trusts the URLs the emulator returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client
import pytest

from fal_edit_async.emulator import Emulator

from .emu_helpers import APP_ROOT, ENDPOINT, edit_input, png_bytes

POLL = 0.005  # fal_client's poll interval here, in seconds (its default is 0.1)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator that really edits inputs (this module checks input handling end to end)."""
    async with Emulator(workers=4) as emulator:
        yield emulator
    assert [] == emulator.internal_errors


@pytest.fixture
async def fal(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """An official ``fal_client.AsyncClient`` pointed at the emulator."""
    monkeypatch.setenv("FAL_KEY", emu.api_key)
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", emu.queue_url + "/")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", emu.queue_url + "/")
    monkeypatch.setattr(fal_client.client, "REST_URL", emu.rest_url)
    monkeypatch.setattr(fal_client.client, "CDN_URL", emu.cdn_url)
    client = fal_client.AsyncClient(key=emu.api_key)
    try:
        yield client
    finally:
        # fal_client caches one httpx client per AsyncClient and never closes it itself.
        await (await client._client).aclose()


async def test_submit_status_events_and_get(emu: Emulator, fal: Any) -> None:
    """submit, status with and without logs, iter_events and get all work."""
    emu.hold_jobs()
    handle = await fal.submit(ENDPOINT, edit_input())
    assert f"{emu.queue_url}/{APP_ROOT}/requests/{handle.request_id}" == handle.response_url
    await emu.wait_jobs_held(1)
    status = await handle.status(with_logs=True)
    assert isinstance(status, fal_client.InProgress)
    assert status.logs is not None
    assert 3 == len(status.logs)
    assert (await handle.status()).logs is None

    emu.release_jobs()
    events = [event async for event in handle.iter_events(with_logs=True, interval=POLL)]
    assert isinstance(events[-1], fal_client.Completed)
    assert events[-1].error is None
    assert "inference_time" in events[-1].metrics
    result = await handle.get(interval=POLL)
    assert 1 == len(result["images"])
    assert result["images"][0]["url"].startswith(emu.cdn_url)


async def test_queued_status(emu: Emulator, fal: Any) -> None:
    """A queued job parses as ``Queued`` with its 0-based position."""
    emu.hold_queue()
    await fal.submit(ENDPOINT, edit_input(prompt="first"))
    second = await fal.submit(ENDPOINT, edit_input(prompt="second"))
    assert fal_client.Queued(position=1) == await second.status()
    emu.release_queue()


async def test_handles_built_from_ids(emu: Emulator, fal: Any) -> None:
    """status/result/get_handle by (endpoint, id) build sub-path-free URLs the emulator serves."""
    handle = await fal.submit(ENDPOINT, edit_input())
    await emu.wait_for_state(handle.request_id, "COMPLETED")
    status = await fal.status(ENDPOINT, handle.request_id, with_logs=True)
    assert isinstance(status, fal_client.Completed)
    result = await fal.result(ENDPOINT, handle.request_id)
    rebuilt = await fal.get_handle(ENDPOINT, handle.request_id)
    assert result == await rebuilt.get(interval=POLL)


async def test_subscribe_with_options(emu: Emulator, fal: Any) -> None:
    """subscribe sends priority, hint and start timeout; the emulator records them."""
    updates: list[Any] = []
    result = await fal.subscribe(
        ENDPOINT,
        edit_input(num_images=2),
        with_logs=True,
        interval=POLL,
        on_queue_update=updates.append,
        priority="low",
        hint="shard-1",
        start_timeout=30,
    )
    assert 2 == len(result["images"])
    assert isinstance(updates[-1], fal_client.Completed)
    (job,) = emu.jobs.values()
    assert ("low", "shard-1", 30.0) == (job.priority, job.hint, job.timeout)


async def test_webhook_url_is_sent(emu: Emulator, fal: Any) -> None:
    """``webhook_url`` reaches the emulator as ``fal_webhook``."""
    emu.hold_queue()
    handle = await fal.submit(ENDPOINT, edit_input(), webhook_url="http://127.0.0.1:9/h?a=1")
    assert "http://127.0.0.1:9/h?a=1" == emu.jobs[handle.request_id].webhook_url
    await handle.cancel()


async def test_cancel(emu: Emulator, fal: Any) -> None:
    """cancel of a queued job succeeds; the result is a 499; a second cancel raises."""
    emu.hold_queue()
    handle = await fal.submit(ENDPOINT, edit_input())
    await handle.cancel()
    status = await handle.status()
    assert ("client_cancelled", False) == (status.error_type, emu.jobs[handle.request_id].ran)
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get(interval=POLL)
    assert (499, "client_cancelled") == (caught.value.status_code, caught.value.error_type)
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.cancel()
    assert 400 == caught.value.status_code


async def test_validation_error(emu: Emulator, fal: Any) -> None:
    """A bad input surfaces from the result call as a 422 whose message is the detail list."""
    handle = await fal.submit(ENDPOINT, edit_input(quality="ultra"))
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get(interval=POLL)
    assert 422 == caught.value.status_code
    detail: Any = caught.value.message  # fal_client passes the 422 detail list through
    assert ["body", "quality"] == detail[0]["loc"]


async def test_ingress_error_is_retried_once(emu: Emulator, fal: Any) -> None:
    """fal_client retries an nginx 502 on submit; the job is queued exactly once."""
    emu.schedule_fault("submit", "ingress_error")
    body = edit_input(prompt="retry me")
    await fal.submit(ENDPOINT, body)
    assert 1 == emu.counters.faults_injected["ingress_error"]
    assert [1] == list(emu.counters.submits_by_input.values())


async def test_server_error_after_queue_is_not_retried(emu: Emulator, fal: Any) -> None:
    """fal_client raises on a 5xx naming a queued job; the id in its headers re-attaches."""
    emu.schedule_fault("submit", "server_error_after_queue")
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await fal.submit(ENDPOINT, edit_input(prompt="queued anyway"))
    assert 500 == caught.value.status_code
    headers = {k.lower(): v for k, v in caught.value.response_headers.items()}
    (job,) = emu.jobs.values()
    assert job.request_id == headers["x-fal-request-id"]
    handle = await fal.get_handle(ENDPOINT, headers["x-fal-request-id"])
    assert 1 == len((await handle.get(interval=POLL))["images"])
    assert (1, 1) == (emu.counters.submit_attempts, emu.counters.billed)


async def test_result_in_progress_after_completion(emu: Emulator, fal: Any) -> None:
    """fal_client surfaces a lagging result as a 400 it does not retry; the next call succeeds."""
    handle = await fal.submit(ENDPOINT, edit_input())
    await emu.wait_for_state(handle.request_id, "COMPLETED")
    emu.schedule_fault("result", "result_in_progress")
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get(interval=POLL)
    assert (400, "Request is still in progress") == (caught.value.status_code, str(caught.value))
    assert 1 == len((await handle.get(interval=POLL))["images"])


async def test_upload_file_and_use_it(emu: Emulator, fal: Any, tmp_path: Path) -> None:
    """upload_file uses the CDN token path; the URL works as an input; no key reaches the CDN."""
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes((90, 40)))
    url = await fal.upload_file(path)
    assert url.startswith(emu.cdn_url + "/files/") and url.endswith("/in.png")
    result = await fal.subscribe(ENDPOINT, edit_input(image_urls=[url]), interval=POLL)
    assert 1536 == result["images"][0]["width"]
    counters = emu.counters
    assert (1, 1, 0) == (counters.token_requests, counters.cdn_uploads, counters.cdn_auth_requests)


async def test_upload_falls_back_to_initiate(emu: Emulator, fal: Any) -> None:
    """When the CDN upload fails, fal_client's fallback (initiate + PUT) works too."""
    emu.schedule_fault("upload", "server_error")
    url = await fal.upload(b"hello", "text/plain", file_name="a.txt")
    assert url.endswith("/a.txt")
    counters = emu.counters
    assert (1, 1) == (counters.upload_initiates, counters.upload_puts)
    # fal_client sends its key along with the PUT to the upload URL; the counter shows it.
    assert 1 == counters.cdn_auth_requests


async def test_fal_client_runs_against_the_fal_like_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """fal_client, unchanged, on the fal-like profile: a required key, REST on its own
    origin (an upload), sloppy payloads (null queue positions, numeric log timestamps)."""
    async with Emulator.fal_like(workers=1) as emu:
        monkeypatch.setenv("FAL_KEY", emu.api_key)
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", emu.queue_url + "/")
        monkeypatch.setattr(fal_client.client, "REST_URL", emu.rest_url)
        monkeypatch.setattr(fal_client.client, "CDN_URL", emu.cdn_url)
        client = fal_client.AsyncClient(key=emu.api_key)
        try:
            path = tmp_path / "in.png"
            path.write_bytes(png_bytes())
            url = await client.upload_file(path)
            emu.hold_queue()
            await client.submit(ENDPOINT, edit_input(prompt="first", image_urls=[url]))
            second = await client.submit(ENDPOINT, edit_input(prompt="second", image_urls=[url]))
            assert fal_client.Queued(position=None) == await second.status()
            emu.release_queue()
            events = [e async for e in second.iter_events(with_logs=True, interval=POLL)]
            assert isinstance(events[-1], fal_client.Completed)
            result = await second.get(interval=POLL)
            assert 1 == len(result["images"])
        finally:
            await (await client._client).aclose()
        assert emu.rest_url != emu.queue_url
        assert 0 == emu.counters.unauthorized
        assert [] == emu.internal_errors
