"""The request history (``GET /v1/models/requests/by-endpoint``) and start timeouts."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from fal_edit_async.emulator import Emulator

from .emu_helpers import ENDPOINT, edit_input, get_json, submit

HISTORY = "/v1/models/requests/by-endpoint"


async def _page(
    http: aiohttp.ClientSession, emu: Emulator, **query: Any
) -> tuple[int, dict[str, Any]]:
    params = {"endpoint_id": ENDPOINT, **{k: str(v) for k, v in query.items()}}
    async with http.get(emu.rest_url + HISTORY, params=params) as resp:
        return resp.status, await resp.json()


async def test_history_lists_every_request_with_its_payloads(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Every page is walked by cursor; ``expand=payloads`` adds the input and output."""
    sent = [await submit(http, emu, edit_input(prompt=f"p{i}")) for i in range(5)]
    await emu.wait_completed(5)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        status, page = await _page(http, emu, limit=2, expand="payloads", **extra)
        assert 200 == status
        seen += page["items"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert sorted(j["request_id"] for j in sent) == sorted(i["request_id"] for i in seen)
    assert {f"p{i}" for i in range(5)} == {i["json_input"]["prompt"] for i in seen}
    assert all(i["status_code"] == 200 and i["json_output"]["images"] for i in seen)
    assert [i["sent_at"] for i in seen] == sorted((i["sent_at"] for i in seen), reverse=True)


async def test_history_without_expand_has_no_payloads(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Payloads come only with ``expand=payloads``; ``X-Fal-Store-IO: 0`` stores none."""
    await submit(http, emu, headers={"X-Fal-Store-IO": "0"})
    await emu.wait_completed(1)
    _, plain = await _page(http, emu)
    assert "json_input" not in plain["items"][0]
    _, expanded = await _page(http, emu, expand="payloads")
    assert expanded["items"][0]["json_input"] is None


async def test_a_request_appears_only_after_the_lag(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """With ``history_lag`` a request sent just now is not listed yet."""
    emu.history_lag = 3600
    await submit(http, emu)
    assert [] == (await _page(http, emu))[1]["items"]
    emu.history_lag = 0
    assert 1 == len((await _page(http, emu))[1]["items"])


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"limit": 101}, id="limit-over-100"),
        pytest.param({"limit": 0}, id="limit-zero"),
        pytest.param({"start": "yesterday"}, id="bad-start"),
        pytest.param({"status": "maybe"}, id="bad-status"),
    ],
)
async def test_bad_queries_are_refused(
    emu: Emulator, http: aiohttp.ClientSession, query: dict[str, Any]
) -> None:
    """Out-of-range limits, bad times and unknown statuses are 422s."""
    assert 422 == (await _page(http, emu, **query))[0]


async def test_history_needs_the_key(emu: Emulator) -> None:
    """The history is the account's: no key, no answer."""
    async with aiohttp.ClientSession() as anon:
        async with anon.get(emu.rest_url + HISTORY, params={"endpoint_id": ENDPOINT}) as resp:
            assert 401 == resp.status


async def test_the_window_is_start_inclusive_end_exclusive(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Only requests sent in ``[start, end)`` are listed."""
    await submit(http, emu)
    _, page = await _page(http, emu)
    sent_at = page["items"][0]["sent_at"]
    assert 1 == len((await _page(http, emu, start=sent_at))[1]["items"])
    assert 0 == len((await _page(http, emu, end=sent_at))[1]["items"])


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        pytest.param("history_loop", lambda p, c: p["next_cursor"] == c, id="loop"),
        pytest.param(
            "history_no_cursor", lambda p, c: p["has_more"] and not p["next_cursor"], id="no-cursor"
        ),
        pytest.param(
            "history_no_payloads", lambda p, c: p["items"][0]["json_input"] is None, id="no-payload"
        ),
        pytest.param(
            "history_foreign",
            lambda p, c: p["items"][-1]["endpoint_id"] != ENDPOINT,
            id="foreign",
        ),
    ],
)
async def test_hostile_history_pages(
    emu: Emulator, http: aiohttp.ClientSession, kind: str, check: Any
) -> None:
    """Scheduled lies: a looping cursor, more without a cursor, no payloads, a foreign item."""
    for _ in range(3):
        await submit(http, emu)
    _, first = await _page(http, emu, limit=1)
    emu.schedule_fault("history", kind)
    _, page = await _page(http, emu, limit=1, expand="payloads", cursor=first["next_cursor"])
    assert check(page, first["next_cursor"])


@pytest.mark.parametrize("header", ["X-Fal-Request-Timeout", "X-Fal-Request-Start-Timeout"])
async def test_a_job_not_started_in_time_ends_unbilled(
    emu: Emulator, http: aiohttp.ClientSession, header: str
) -> None:
    """Either start-timeout header: a job still queued at T ends 504, timeout type user,
    and is not billed."""
    emu.hold_queue()
    job = await submit(http, emu, headers={header: "0.2"})
    await emu.wait_completed(1)
    status, body, headers = await get_json(http, job["response_url"])
    assert (504, "request_timeout", "user") == (
        status,
        body["error_type"],
        headers["X-Fal-Request-Timeout-Type"],
    )
    assert 0 == emu.counters.billed
