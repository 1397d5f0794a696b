"""The emulator's queue API, spoken with a plain aiohttp session (protocol reference §3-§7)."""

from __future__ import annotations

import aiohttp
import pytest

from fal_edit_async.emulator import Emulator, input_key

from .emu_helpers import APP_ROOT, ENDPOINT, edit_input, get_json, submit


async def test_submit_answers_sub_path_free_urls(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Submit returns IN_QUEUE, the id and absolute URLs under the app root, sub-path dropped."""
    async with http.post(emu.url_for(ENDPOINT), json=edit_input()) as resp:
        body = await resp.json()
        assert 200 == resp.status
        assert "application/json" == resp.content_type
        assert body["request_id"] == resp.headers["x-fal-request-id"]
    base = f"{emu.queue_url}/{APP_ROOT}/requests/{body['request_id']}"
    assert "IN_QUEUE" == body["status"]
    assert base == body["response_url"]
    assert base + "/status" == body["status_url"]
    assert base + "/cancel" == body["cancel_url"]
    assert isinstance(body["queue_position"], int)


async def test_status_codes_follow_the_state(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Status is 202 while IN_QUEUE and IN_PROGRESS, 200 once COMPLETED, with each shape."""
    emu.hold_queue()
    emu.hold_jobs()
    job = await submit(http, emu)
    rid = job["request_id"]

    code, body, headers = await get_json(http, job["status_url"], params={"logs": "1"})
    assert (202, "IN_QUEUE", 0) == (code, body["status"], body["queue_position"])
    assert rid == headers["x-fal-request-id"]
    assert {"response_url", "status_url", "cancel_url", "request_id"} <= body.keys()

    emu.release_queue()
    await emu.wait_jobs_held(1)
    code, body, _ = await get_json(http, job["status_url"], params={"logs": "1"})
    assert (202, "IN_PROGRESS") == (code, body["status"])
    assert 3 == len(body["logs"])
    assert {"message", "level", "source", "timestamp"} == body["logs"][0].keys()

    emu.release_jobs()
    await emu.wait_for_state(rid, "COMPLETED")
    code, body, _ = await get_json(http, job["status_url"], params={"logs": "1"})
    assert (200, "COMPLETED") == (code, body["status"])
    assert "inference_time" in body["metrics"]
    assert "error" not in body


async def test_queue_positions_count_jobs_ahead(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Queue positions are 0-based and close up when a job ahead is cancelled or started."""
    emu.hold_queue()
    jobs = [await submit(http, emu, edit_input(prompt=f"p{i}")) for i in range(4)]
    positions = [(await get_json(http, j["status_url"]))[1]["queue_position"] for j in jobs]
    assert [0, 1, 2, 3] == positions

    async with http.put(jobs[1]["cancel_url"]) as resp:
        assert 202 == resp.status
    emu.release_queue(1)
    await emu.wait_for_state(jobs[0]["request_id"], "IN_PROGRESS")
    positions = [(await get_json(http, j["status_url"]))[1].get("queue_position") for j in jobs]
    assert [None, None, 0, 1] == positions


@pytest.mark.parametrize(
    ("value", "logs_on"),
    [
        pytest.param("1", True, id="one"),
        pytest.param("true", True, id="true"),
        pytest.param("True", True, id="True"),
        pytest.param("0", False, id="zero"),
        pytest.param("false", False, id="false"),
        pytest.param(None, False, id="absent"),
    ],
)
async def test_logs_parameter_spellings(
    emu: Emulator, http: aiohttp.ClientSession, value: str | None, logs_on: bool
) -> None:
    """``logs`` accepts 1/0 (fal docs) and true/false (fal_client); logs are null when off."""
    job = await submit(http, emu)
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    params = {} if value is None else {"logs": value}
    _, body, _ = await get_json(http, job["status_url"], params=params)
    assert "logs" in body
    assert logs_on == (body["logs"] is not None)
    if logs_on:
        assert 3 == len(body["logs"])


@pytest.mark.parametrize(
    ("endpoint", "root"),
    [
        pytest.param("fal-ai/gpt-image-1/edit-image", "fal-ai/gpt-image-1", id="sub-path"),
        pytest.param("fal-ai/gpt-image-1", "fal-ai/gpt-image-1", id="no-sub-path"),
        pytest.param("fal-ai/flux/dev/image-to-image", "fal-ai/flux", id="deep-sub-path"),
        pytest.param("workflows/me/wf/sub", "workflows/me/wf", id="workflows"),
        pytest.param("comfy/me/app", "comfy/me/app", id="comfy"),
        pytest.param("123-my-app", "123/my-app", id="legacy"),
    ],
)
async def test_app_roots(
    emu: Emulator, http: aiohttp.ClientSession, endpoint: str, root: str
) -> None:
    """Status, result and cancel live under the app root; namespaces make it three segments."""
    job = await submit(http, emu, endpoint=endpoint)
    assert f"{emu.queue_url}/{root}/requests/{job['request_id']}" == job["response_url"]
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert 200 == (await get_json(http, job["response_url"]))[0]
    assert endpoint == emu.jobs[job["request_id"]].endpoint_id


async def test_other_app_root_does_not_find_the_request(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A request id looked up under another app's root is unknown there."""
    job = await submit(http, emu)
    other = f"{emu.queue_url}/fal-ai/other-app/requests/{job['request_id']}"
    assert 404 == (await get_json(http, other + "/status"))[0]
    assert 404 == (await get_json(http, other))[0]


@pytest.mark.parametrize("suffix", ["", "/", "/response"])
async def test_result_url_aliases(emu: Emulator, http: aiohttp.ClientSession, suffix: str) -> None:
    """The result is served at the response URL, with a trailing slash, and at /response."""
    job = await submit(http, emu)
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    code, body, headers = await get_json(http, job["response_url"] + suffix)
    assert 200 == code
    assert 1 == len(body["images"])
    assert job["request_id"] == headers["x-fal-request-id"]


async def test_status_with_trailing_slash(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """``.../status/`` (as the fal CLI sends it) works like ``.../status``."""
    job = await submit(http, emu)
    assert (await get_json(http, job["status_url"] + "/"))[0] in (200, 202)


async def test_result_before_completion(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Fetching the result early answers 400 "Request is still in progress"."""
    emu.hold_jobs()
    job = await submit(http, emu)
    code, body, _ = await get_json(http, job["response_url"])
    assert (400, {"detail": "Request is still in progress"}) == (code, body)
    assert emu.jobs[job["request_id"]].result_fetched_at is None


async def test_unknown_request_id(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Status, stream and result answer 404 JSON for an unknown id; cancel says NOT_FOUND."""
    base = f"{emu.queue_url}/{APP_ROOT}/requests/nope"
    for url in (base + "/status", base + "/status/stream", base):
        code, body, _ = await get_json(http, url)
        assert (404, "Request not found") == (code, body["detail"])
    async with http.put(base + "/cancel") as resp:
        assert (404, {"status": "NOT_FOUND"}) == (resp.status, await resp.json())


async def test_unknown_path_is_404(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Paths that are no queue route answer 404 JSON."""
    for url in (f"{emu.queue_url}/fal-ai", f"{emu.queue_url}/fal-ai/app/requests"):
        assert 404 == (await get_json(http, url))[0]


async def test_cancel_queued_job_never_runs(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A queued job that is cancelled is removed, never runs, and its result is a 499."""
    emu.hold_queue()
    job = await submit(http, emu)
    async with http.put(job["cancel_url"]) as resp:
        assert (202, {"status": "CANCELLATION_REQUESTED"}) == (resp.status, await resp.json())
    emu.release_queue()
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert (True, False) == (record.cancelled, record.ran)
    _, status, _ = await get_json(http, job["status_url"])
    assert ("COMPLETED", "client_cancelled") == (status["status"], status["error_type"])
    code, body, headers = await get_json(http, job["response_url"])
    assert (499, "client_cancelled") == (code, body["error_type"])
    assert "client_cancelled" == headers["X-Fal-Error-Type"]


async def test_cancel_running_held_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A running job, even held at the gate, ends COMPLETED with client_cancelled."""
    emu.hold_jobs()
    job = await submit(http, emu)
    await emu.wait_jobs_held(1)
    async with http.put(job["cancel_url"]) as resp:
        assert 202 == resp.status
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert (True, True, "client_cancelled") == (record.ran, record.cancelled, record.error_type)
    assert 0 == emu.jobs_held
    assert 499 == (await get_json(http, job["response_url"]))[0]


async def test_cancel_completed_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Cancelling a finished job answers 400 ALREADY_COMPLETED and changes nothing."""
    job = await submit(http, emu)
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    async with http.put(job["cancel_url"]) as resp:
        assert (400, {"status": "ALREADY_COMPLETED"}) == (resp.status, await resp.json())
    assert 200 == (await get_json(http, job["response_url"]))[0]
    assert 1 == emu.counters.cancels


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer abc", id="wrong-scheme"),
        pytest.param("Key ", id="empty-key"),
        pytest.param("Key wrong", id="wrong-key"),
    ],
)
async def test_unauthorized(emu: Emulator, authorization: str | None) -> None:
    """Queue and REST routes answer 401 JSON without the key; the CDN never asks for it."""
    async with Emulator(api_key="the-key", fast_images=True) as locked:
        headers = {"Authorization": authorization} if authorization else {}
        async with aiohttp.ClientSession(headers=headers) as session:
            urls = [
                ("POST", locked.url_for(ENDPOINT)),
                ("GET", f"{locked.queue_url}/{APP_ROOT}/requests/x/status"),
                ("POST", f"{locked.rest_url}/storage/auth/token?storage_type=fal-cdn-v3"),
            ]
            for method, url in urls:
                async with session.request(method, url, json={}) as resp:
                    assert 401 == resp.status
                    assert "detail" in await resp.json()
                    assert "x-fal-request-id" in resp.headers
            async with session.get(f"{locked.cdn_url}/files/x/y.png") as resp:
                assert 404 == resp.status  # not 401: the CDN is public
        assert 3 == locked.counters.unauthorized


async def test_any_key_accepted_without_api_key(emu: Emulator) -> None:
    """With ``api_key=None`` any non-empty key is accepted."""
    async with aiohttp.ClientSession(headers={"Authorization": "Key whatever"}) as session:
        await submit(session, emu)  # asserts the 200
    assert emu.api_key.startswith("emulator-")


async def test_submit_records_headers_and_webhook(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Priority, runner hint, start timeout and the webhook URL are recorded on the job."""
    headers = {
        "X-Fal-Queue-Priority": "low",
        "X-Fal-Runner-Hint": "shard-7",
        "X-Fal-Request-Timeout": "30.0",
    }
    params = {"fal_webhook": "http://127.0.0.1:9/hook?a=1"}
    body = edit_input()
    job = await submit(http, emu, body, headers=headers, params=params)
    record = emu.jobs[job["request_id"]]
    assert ("low", "shard-7", 30.0) == (record.priority, record.hint, record.timeout)
    assert "http://127.0.0.1:9/hook?a=1" == record.webhook_url
    assert job["request_id"] == job["gateway_request_id"]
    assert "Authorization" not in record.headers
    assert 1 == emu.counters.submits_by_input[input_key(body)]


async def test_bad_request_timeout_header(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A start timeout that is not a positive number is refused with 400; nothing is queued."""
    for value in ("soon", "0", "-1", "nan"):
        headers = {"X-Fal-Request-Timeout": value}
        async with http.post(emu.url_for(ENDPOINT), json=edit_input(), headers=headers) as resp:
            assert 400 == resp.status
    assert 0 == emu.counters.submits


async def test_start_timeout_expires_in_queue(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A job still queued when its start timeout passes ends with a user 504."""
    emu.hold_queue()
    job = await submit(http, emu, headers={"X-Fal-Request-Timeout": "0.05"})
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert (False, "request_timeout") == (record.ran, record.error_type)
    code, body, headers = await get_json(http, job["response_url"])
    assert (504, "request_timeout") == (code, body["error_type"])
    assert "user" == headers["X-Fal-Request-Timeout-Type"]


async def test_invalid_json_is_refused_at_submit(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A body that is not JSON is a 422 at submit, and nothing is queued."""
    async with http.post(emu.url_for(ENDPOINT), data=b"{nope") as resp:
        body = await resp.json()
        assert 422 == resp.status
    assert ["body"] == body["detail"][0]["loc"]
    assert 0 == emu.counters.submits


async def test_invalid_input_fails_on_the_result(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Model validation errors surface as a COMPLETED job whose result is a 422 detail list."""
    job = await submit(http, emu, {"prompt": "", "image_urls": ["ftp://x"], "num_images": True})
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    _, status, _ = await get_json(http, job["status_url"])
    assert "Invalid status code: 422" == status["error"]
    code, body, headers = await get_json(http, job["response_url"])
    assert 422 == code
    locs = [tuple(d["loc"]) for d in body["detail"]]
    expected = [("body", "prompt"), ("body", "image_urls", 0), ("body", "num_images")]
    assert expected == locs
    assert "false" == headers["X-Fal-Retryable"]


async def test_request_log_and_totals(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Every request is counted and logged as (time, method, path, status)."""
    job = await submit(http, emu)
    await get_json(http, job["status_url"])
    log = emu.counters.request_log
    assert 2 == emu.counters.requests_total == len(log)
    assert ("POST", f"/{ENDPOINT}", 200) == log[0][1:]
    assert log[0][0] <= log[1][0]


async def test_max_queue_length(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """``fal_max_queue_length=N`` refuses a submit with 429 when more than N are waiting."""
    emu.hold_queue()
    params = {"fal_max_queue_length": "1"}
    for _ in range(2):
        await submit(http, emu, params=params)
    async with http.post(emu.url_for(ENDPOINT), json=edit_input(), params=params) as resp:
        assert 429 == resp.status
    async with http.post(
        emu.url_for(ENDPOINT), json=edit_input(), params={"fal_max_queue_length": "x"}
    ) as resp:
        assert 400 == resp.status
    assert 2 == emu.counters.submits
