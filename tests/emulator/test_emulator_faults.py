"""Fault injection: each kind at its configured rate, and exact schedules for tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest

from fal_edit_async.emulator import Emulator, Faults, input_key

from .emu_helpers import ENDPOINT, edit_input, get_json, sse_items, submit

N = 200
RATE = 0.5


def near_half(count: int, total: int) -> bool:
    """True when ``count`` is within 4.5 standard deviations of ``total / 2``."""
    deviation: float = (total * RATE * (1 - RATE)) ** 0.5
    return abs(count - total * RATE) <= 4.5 * deviation


@asynccontextmanager
async def running(
    faults: Faults, **options: Any
) -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession]]:
    """An emulator with ``faults`` and a keyed session (helper for the fixtures below)."""
    async with Emulator(faults=faults, fast_images=True, **options) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            yield emu, http


async def poll_outcomes(emu: Emulator, http: aiohttp.ClientSession, n: int) -> Counter[Any]:
    """Poll one job's status ``n`` times; count status codes (``reset`` for a drop)."""
    emu.hold_jobs()
    job = await submit(http, emu)
    outcomes: Counter[Any] = Counter()
    for _ in range(n):
        try:
            async with http.get(job["status_url"]) as resp:
                await resp.read()
                outcomes[resp.status] += 1
        except aiohttp.ServerDisconnectedError:
            outcomes["reset"] += 1
    return outcomes


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        pytest.param("rate_limit", 429, id="rate_limit"),
        pytest.param("server_error", 500, id="server_error"),
        pytest.param("ingress_error", 502, id="ingress_error"),
        pytest.param("connection_reset", "reset", id="connection_reset"),
    ],
)
async def test_http_faults_at_their_rate(kind: str, outcome: Any) -> None:
    """Each HTTP-level fault hits about half the requests at rate 0.5."""
    rates: dict[str, Any] = {kind: RATE}
    faults = Faults(seed=7, routes={"status"}, **rates)
    async with running(faults) as (emu, http):
        outcomes = await poll_outcomes(emu, http, N)
        injected = emu.counters.faults_injected[kind]
        seen = injected + emu.counters.status_polls  # every status request that arrived
        assert near_half(injected, seen), (injected, seen)
        if kind == "connection_reset":
            # aiohttp resends an idempotent GET once after a drop, so fewer surface.
            assert 0 < outcomes[outcome] <= injected
        else:
            assert (N, injected) == (seen, outcomes[outcome])


async def test_fault_answers_look_like_fal() -> None:
    """429 has Retry-After and a request id; 5xx has a request id; ingress has nginx and none."""
    async with running(Faults(retry_after=7)) as (emu, http):
        url = emu.url_for(ENDPOINT)
        emu.schedule_fault("submit", "rate_limit")
        emu.schedule_fault("submit", "server_error", status=503)
        emu.schedule_fault("submit", "ingress_error", status=504)
        answers = []
        for _ in range(3):
            async with http.post(url, json=edit_input()) as resp:
                answers.append((resp.status, resp.headers.copy(), await resp.text()))
        (s1, h1, _), (s2, h2, _), (s3, h3, b3) = answers
        assert (429, "7") == (s1, h1["Retry-After"])
        assert "x-fal-request-id" in h1
        assert 503 == s2
        assert "x-fal-request-id" in h2
        assert "internal_error" == h2["X-Fal-Error-Type"]
        assert (504, "text/html") == (s3, h3["Content-Type"].split(";")[0])
        assert "x-fal-request-id" not in h3
        assert "nginx" in b3
        assert 0 == emu.counters.submits  # none of them queued anything
        assert 1 == (await submit(http, emu))["queue_position"] + 1


async def test_routes_select_where_faults_apply() -> None:
    """With ``routes={"submit"}`` only submits are rate limited; status polls are not."""
    async with running(Faults(rate_limit=1.0, routes={"submit"})) as (emu, http):
        async with http.post(emu.url_for(ENDPOINT), json=edit_input()) as resp:
            assert 429 == resp.status
        async with http.get(f"{emu.queue_url}/fal-ai/gpt-image-1/requests/x/status") as resp:
            assert 404 == resp.status  # answered normally: not limited
        assert 1 == emu.counters.faults_injected["rate_limit"]


async def test_same_seed_same_faults() -> None:
    """Two emulators with the same seed inject the same faults in the same order."""
    runs = []
    for _ in range(2):
        async with running(Faults(seed=3, routes={"status"}, rate_limit=0.3)) as (emu, http):
            emu.hold_jobs()
            job = await submit(http, emu)
            codes = []
            for _ in range(40):
                async with http.get(job["status_url"]) as resp:
                    codes.append(resp.status)
            runs.append(codes)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("after_enqueue", [False, True])
async def test_submit_reset_before_or_after_enqueue(after_enqueue: bool) -> None:
    """A dropped submit leaves the job queued only when ``after_enqueue`` says so."""
    async with running(Faults()) as (emu, http):
        emu.schedule_fault("submit", "connection_reset", after_enqueue=after_enqueue)
        body = edit_input(prompt="only once")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with http.post(emu.url_for(ENDPOINT), json=body):
                pass
        assert int(after_enqueue) == emu.counters.submits == len(emu.jobs)
        assert 0 == emu.counters.request_log[-1][3]
        assert 1 == emu.counters.faults_injected["connection_reset"]


async def test_slow_response_waits_for_release() -> None:
    """A slow answer is held until ``release_slow()`` (or its delay), then answered normally."""
    async with running(Faults()) as (emu, http):
        job = await submit(http, emu)
        emu.schedule_fault("status", "slow_response", delay=60)
        codes: list[int] = []

        async def poll() -> None:
            async with http.get(job["status_url"]) as resp:
                codes.append(resp.status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await emu.wait_slow_held(1)
            assert [] == codes
            emu.release_slow()
        assert codes[0] in (200, 202)


async def test_slow_response_at_rate_with_short_delay() -> None:
    """At rate 0.5 about half the answers are delayed (here by 0 s), all still answered."""
    async with running(Faults(routes={"status"}, slow_response=RATE, slow_delay=0)) as (emu, http):
        outcomes = await poll_outcomes(emu, http, N)
        assert N == outcomes[202]
        assert near_half(emu.counters.faults_injected["slow_response"], N)


async def stream_dropped(emu: Emulator, http: aiohttp.ClientSession, job: dict[str, Any]) -> bool:
    """Open the job's stream; True when it ends after the first event instead of going on."""
    async with http.get(job["status_url"] + "/stream?logs=1") as resp:
        items = sse_items(resp)
        assert "data" == (await anext(items))[0]
        emu.add_log(job["request_id"], "poke")  # a stream still open must send an event
        async for kind, _ in items:
            if kind == "data":
                return False
        return True


async def test_stream_drop_at_rate() -> None:
    """At rate 0.5 about half the streams end cleanly after one event, before COMPLETED."""
    async with running(Faults(seed=1, stream_drop=RATE)) as (emu, http):
        emu.hold_jobs()
        job = await submit(http, emu)
        dropped = [await stream_dropped(emu, http, job) for _ in range(100)]
        assert near_half(sum(dropped), 100)
        assert sum(dropped) == emu.counters.faults_injected["stream_drop"]


async def test_stream_drop_schedule() -> None:
    """``schedule_fault("stream", "stream_drop", times=2)`` drops exactly the next two."""
    async with running(Faults()) as (emu, http):
        emu.hold_jobs()
        job = await submit(http, emu)
        emu.schedule_fault("stream", "stream_drop", times=2)
        assert [True, True, False] == [await stream_dropped(emu, http, job) for _ in range(3)]


async def test_refuse_stream_at_rate() -> None:
    """Refused streams answer 405 JSON, so clients fall back to polling."""
    async with running(Faults(seed=2, refuse_stream=RATE)) as (emu, http):
        job = await submit(http, emu)
        await emu.wait_for_state(job["request_id"], "COMPLETED")
        codes: Counter[int] = Counter()
        for _ in range(100):
            async with http.get(job["status_url"] + "/stream") as resp:
                await resp.read()
                codes[resp.status] += 1
        assert near_half(codes[405], 100)
        assert 100 == codes[405] + codes[200]
        emu.schedule_fault("stream", "refuse_stream", status=404)
        assert 404 == (await get_json(http, job["status_url"] + "/stream"))[0]


async def download(http: aiohttp.ClientSession, url: str) -> bool:
    """GET a CDN file; False when the body came up short."""
    try:
        async with http.get(url) as resp:
            await resp.read()
            return True
    except aiohttp.ClientPayloadError:
        return False


async def test_truncated_download_at_rate() -> None:
    """Truncated downloads announce the full length, send half, and close."""
    async with running(Faults(seed=4, truncated_download=RATE)) as (emu, http):
        job = await submit(http, emu)
        await emu.wait_for_state(job["request_id"], "COMPLETED")
        url = emu.jobs[job["request_id"]].output_urls[0]
        async with aiohttp.ClientSession() as cdn:
            complete = [await download(cdn, url) for _ in range(100)]
        assert near_half(complete.count(False), 100)
        assert complete.count(True) == emu.counters.downloads
        emu.schedule_fault("download", "truncated", times=1)
        async with aiohttp.ClientSession() as cdn:
            assert [False] == [await download(cdn, url)]


async def test_model_failure_at_rate() -> None:
    """At rate 0.5 about half the jobs end with the configured model error."""
    faults = Faults(seed=5, model_failure=RATE, model_failure_kind="runner_disconnected")
    async with running(faults, workers=16) as (emu, http):
        for _ in range(N):
            await submit(http, emu)
        await emu.wait_completed(N)
        failed = [job for job in emu.jobs.values() if job.failed]
        assert near_half(len(failed), N)
        assert {"runner_disconnected"} == {job.error_type for job in failed}
        assert {503} == {job.result_status for job in failed}


async def test_model_failure_schedule_kinds() -> None:
    """Scheduled model failures give a flat infrastructure error or a 422 detail list."""
    async with running(Faults()) as (emu, http):
        emu.schedule_fault("job", "model_failure", error_type="runner_disconnected")
        emu.schedule_fault("job", "model_failure")  # default kind: validation
        first, second = await submit(http, emu), await submit(http, emu)
        await emu.wait_completed(2)

        code, body, headers = await get_json(http, first["response_url"])
        assert (503, "runner_disconnected") == (code, body["error_type"])
        assert ("runner_disconnected", "true") == (
            headers["X-Fal-Error-Type"],
            headers["X-Fal-Retryable"],
        )
        _, status, _ = await get_json(http, first["status_url"])
        assert ("Runner disconnected", "runner_disconnected") == (
            status["error"],
            status["error_type"],
        )
        code, body, _ = await get_json(http, second["response_url"])
        assert 422 == code
        assert ["body", "prompt"] == body["detail"][0]["loc"]


async def test_retryable_header_can_be_left_out() -> None:
    """With retryable_header=False failed results keep their error type but no X-Fal-Retryable."""
    async with running(Faults(), retryable_header=False) as (emu, http):
        emu.schedule_fault("job", "model_failure", error_type="runner_disconnected")
        runner = await submit(http, emu)
        await emu.wait_completed(1)
        emu.schedule_fault("job", "model_failure", error_type="validation")
        refused = await submit(http, emu)
        await emu.wait_completed(2)

        code, _, headers = await get_json(http, runner["response_url"])
        assert (503, "runner_disconnected") == (code, headers["X-Fal-Error-Type"])
        assert "X-Fal-Retryable" not in headers
        code, _, headers = await get_json(http, refused["response_url"])
        assert 422 == code
        assert "X-Fal-Retryable" not in headers


@pytest.mark.parametrize(
    ("route", "kind"),
    [
        pytest.param("nowhere", "rate_limit", id="unknown-route"),
        pytest.param("submit", "explode", id="unknown-kind"),
        pytest.param("status", "stream_drop", id="stream-kind-elsewhere"),
        pytest.param("job", "rate_limit", id="http-kind-on-job"),
        pytest.param("status", "server_error_after_queue", id="after-queue-off-submit"),
        pytest.param("status", "result_in_progress", id="in-progress-off-result"),
    ],
)
async def test_bad_schedules_are_refused(emu: Emulator, route: str, kind: str) -> None:
    """Impossible (route, kind) pairs raise ValueError instead of silently never firing."""
    with pytest.raises(ValueError):
        emu.schedule_fault(route, kind)


def test_bad_fault_config_is_refused() -> None:
    """Rates outside 0..1, unknown routes and unknown failure kinds are refused."""
    for bad in (
        {"rate_limit": 1.5},
        {"server_error": -0.1},
        {"routes": {"nope"}},
        {"model_failure_kind": "meteor"},
        {"ingress_status": 500},
        {"server_error_after_queue": 2.0},
    ):
        with pytest.raises(ValueError):
            Faults(**bad)


@pytest.mark.parametrize("status", [None, 503])
async def test_server_error_after_queue_names_the_queued_job(status: int | None) -> None:
    """The submit is queued for real, then answered 5xx with the job's id; the job bills."""
    async with running(Faults()) as (emu, http):
        emu.schedule_fault("submit", "server_error_after_queue", status=status)
        body = edit_input(prompt="queued anyway")
        async with http.post(emu.url_for(ENDPOINT), json=body) as resp:
            answer = (resp.status, await resp.json(), resp.headers.copy())
        code, error, headers = answer
        (job,) = emu.jobs.values()
        assert (status or 500, job.request_id) == (code, headers["x-fal-request-id"])
        assert {"detail": "Internal Server Error", "error_type": "internal_error"} == error
        assert "internal_error" == headers["X-Fal-Error-Type"]

        await emu.wait_for_state(job.request_id, "COMPLETED")
        base = f"{emu.queue_url}/{job.app_root}/requests/{job.request_id}"
        code, result, _ = await get_json(http, base)
        assert (200, 1) == (code, len(result["images"]))
        assert (1, 1, 1) == (
            emu.counters.submits,
            emu.counters.billed,
            emu.counters.faults_injected["server_error_after_queue"],
        )

        await submit(http, emu, body)  # the resubmit a naive client makes: paid twice
        await emu.wait_completed(2)
        assert 2 == emu.counters.billed_by_input[input_key(body)]


async def test_server_error_after_queue_at_rate() -> None:
    """At rate 0.5 about half the submits answer 500, and every one of them was queued."""
    async with running(Faults(seed=8, server_error_after_queue=RATE), workers=16) as (emu, http):
        codes: Counter[int] = Counter()
        for i in range(N):
            async with http.post(emu.url_for(ENDPOINT), json=edit_input(prompt=f"p{i}")) as resp:
                await resp.read()
                codes[resp.status] += 1
        assert near_half(codes[500], N)
        assert (N, N) == (codes[500] + codes[200], emu.counters.submits)
        await emu.wait_completed(N)
        assert N == emu.counters.billed


STILL_RUNNING = (400, {"detail": "Request is still in progress"})


async def test_result_in_progress_after_completion() -> None:
    """Scheduled, a completed job's result answers "still in progress" once, then the result."""
    async with running(Faults()) as (emu, http):
        emu.hold_jobs()
        job = await submit(http, emu)
        emu.schedule_fault("result", "result_in_progress", times=2)
        assert STILL_RUNNING == (await get_json(http, job["response_url"]))[:2]
        assert 0 == emu.counters.faults_injected["result_in_progress"]  # not taken early

        emu.release_jobs()
        record = await emu.wait_for_state(job["request_id"], "COMPLETED")
        code, status, _ = await get_json(http, job["status_url"])
        assert (200, "COMPLETED") == (code, status["status"])  # the status is not behind
        for _ in range(2):
            code, body, headers = await get_json(http, job["response_url"])
            assert STILL_RUNNING == (code, body)
            assert job["request_id"] == headers["x-fal-request-id"]
        assert record.result_fetched_at is None
        code, body, _ = await get_json(http, job["response_url"])
        assert (200, 1) == (code, len(body["images"]))
        assert 2 == emu.counters.faults_injected["result_in_progress"]


async def test_result_in_progress_at_rate() -> None:
    """At rate 0.5 about half the result GETs of a completed job say "still in progress"."""
    async with running(Faults(seed=9, result_in_progress=RATE)) as (emu, http):
        job = await submit(http, emu)
        await emu.wait_for_state(job["request_id"], "COMPLETED")
        codes: Counter[int] = Counter()
        for _ in range(N):
            async with http.get(job["response_url"]) as resp:
                await resp.read()
                codes[resp.status] += 1
        assert near_half(codes[400], N)
        assert (N, codes[400]) == (
            codes[400] + codes[200],
            emu.counters.faults_injected["result_in_progress"],
        )
