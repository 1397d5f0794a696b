"""Result expiry: after ``result_ttl`` (or ``expire_result``) fal forgets the request id."""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import pytest

from fal_edit_async.emulator import Emulator

from .emu_helpers import edit_input, get_json, serving, submit

NOT_FOUND = (404, {"detail": "Request not found"})


async def answers(http: aiohttp.ClientSession, job: dict[str, Any]) -> list[tuple[int, Any]]:
    """What status, status stream, result and cancel answer for a job: (code, JSON body)."""
    found = []
    for url in (job["status_url"], job["status_url"] + "/stream", job["response_url"]):
        code, body, _ = await get_json(http, url)
        found.append((code, body))
    async with http.put(job["cancel_url"]) as resp:
        found.append((resp.status, await resp.json()))
    return found


async def test_expired_result_is_forgotten(
    emu: Emulator, http: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """An expired job answers 404 like an unknown id everywhere; its CDN files stay."""
    job = await submit(http, emu)
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert 200 == (await get_json(http, job["response_url"]))[0]

    emu.expire_result(job["request_id"])
    emu.expire_result(job["request_id"])  # harmless twice
    assert [NOT_FOUND] * 3 + [(404, {"status": "NOT_FOUND"})] == await answers(http, job)
    assert (True, 1, 1) == (record.expired, emu.counters.results_expired, emu.counters.billed)
    async with cdn.get(record.output_urls[0]) as resp:
        assert 200 == resp.status


async def test_expire_result_can_take_the_files(
    emu: Emulator, http: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """With ``files=True`` the job's output files are gone from the CDN too."""
    job = await submit(http, emu, edit_input(num_images=2))
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    emu.expire_result(job["request_id"], files=True)
    for url in record.output_urls:
        async with cdn.get(url) as resp:
            assert 404 == resp.status


async def test_expire_all_results_spares_unfinished_jobs(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """``expire_all_results`` forgets completed results, failed ones too, and no running job."""
    done = await submit(http, emu, edit_input(prompt="done"))
    refused = await submit(http, emu, edit_input(num_images=9))
    await emu.wait_completed(2)
    emu.hold_jobs()
    running = await submit(http, emu, edit_input(prompt="running"))
    await emu.wait_jobs_held(1)

    assert 2 == emu.expire_all_results()
    assert 0 == emu.expire_all_results()
    for job in (done, refused):
        assert NOT_FOUND == (await get_json(http, job["status_url"]))[:2]
    assert 202 == (await get_json(http, running["status_url"]))[0]
    with pytest.raises(ValueError, match="has not completed"):
        emu.expire_result(running["request_id"])
    with pytest.raises(KeyError):
        emu.expire_result("nope")

    emu.release_jobs()
    await emu.wait_completed(3)
    assert 1 == emu.expire_all_results()


async def test_result_ttl_expires_results_by_itself() -> None:
    """With ``result_ttl`` a result is forgotten that long after completion, unprompted."""
    async with serving(result_ttl=0) as (emu, http):
        job = await submit(http, emu)
        record = await emu.wait_for_state(job["request_id"], "COMPLETED")
        await emu.wait_until(lambda: record.expired)
        assert record.completed_at == record.expires_at
        assert NOT_FOUND == (await get_json(http, job["response_url"]))[:2]


async def test_result_ttl_sets_the_deadline(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Results are kept for ever by default; with a ttl, ``expires_at`` says until when."""
    job = await submit(http, emu)
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert (None, False) == (record.expires_at, record.expired)
    async with serving(result_ttl=3600) as (kept, kept_http):
        job = await submit(kept_http, kept)
        record = await kept.wait_for_state(job["request_id"], "COMPLETED")
        assert record.completed_at is not None
        assert record.completed_at + 3600 == record.expires_at
        assert 200 == (await get_json(kept_http, job["response_url"]))[0]


@pytest.mark.parametrize("ttl", [-1, math.inf, math.nan, True, "60"])
def test_bad_result_ttl_is_refused(ttl: Any) -> None:
    """A negative, infinite or non-numeric ``result_ttl`` is refused (None means never)."""
    with pytest.raises(ValueError, match="result_ttl"):
        Emulator(result_ttl=ttl)
