"""Cancels as fal does them: queued jobs removed, running ones only signalled (best effort)."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest

from fal_edit_async.emulator import Emulator, Faults

from .emu_helpers import edit_input, get_json, serving, submit


async def cancel(http: aiohttp.ClientSession, job: dict[str, Any]) -> tuple[int, Any]:
    """PUT the job's cancel URL; return (status, JSON body)."""
    async with http.put(job["cancel_url"]) as resp:
        return resp.status, await resp.json()


async def running_job(emu: Emulator, http: aiohttp.ClientSession, prompt: str = "p") -> Any:
    """Submit a job and return its submit answer once it is IN_PROGRESS, held at the job gate."""
    emu.hold_jobs()
    held = emu.jobs_held
    job = await submit(http, emu, edit_input(prompt=prompt))
    await emu.wait_jobs_held(held + 1)
    return job


async def test_ignored_cancel_runs_on_and_bills() -> None:
    """With cancel_running="ignore" a running job answers 202 but completes with output, billed."""
    async with serving(cancel_running="ignore") as (emu, http):
        job = await running_job(emu, http)
        requested = (202, {"status": "CANCELLATION_REQUESTED"})
        assert requested == await cancel(http, job)
        assert requested == await cancel(http, job)  # signalled already: still ignored
        code, status, _ = await get_json(http, job["status_url"])
        assert (202, "IN_PROGRESS") == (code, status["status"])

        emu.release_jobs()
        record = await emu.wait_for_state(job["request_id"], "COMPLETED")
        code, body, _ = await get_json(http, job["response_url"])
        assert (200, 1) == (code, len(body["images"]))
        assert (True, False, True) == (record.cancel_ignored, record.cancelled, record.billed)
        assert (2, 1, 1) == (
            emu.counters.cancels,
            emu.counters.cancels_ignored,
            emu.counters.billed,
        )
        assert (400, {"status": "ALREADY_COMPLETED"}) == await cancel(http, job)


async def test_queued_job_is_removed_even_when_cancels_are_ignored() -> None:
    """A queued job is always removed by a cancel: it never runs and is not billed."""
    async with serving(cancel_running="ignore") as (emu, http):
        emu.hold_queue()
        job = await submit(http, emu)
        assert 202 == (await cancel(http, job))[0]
        emu.release_queue()
        record = await emu.wait_for_state(job["request_id"], "COMPLETED")
        assert ("client_cancelled", False, False) == (record.error_type, record.ran, record.billed)
        assert 0 == emu.counters.cancels_ignored


async def test_honour_is_the_default() -> None:
    """By default (and with "honour" or 0) a running job stops at a cancel, unbilled."""
    for options in ({}, {"cancel_running": "honour"}, {"cancel_running": 0.0}):
        async with serving(**options) as (emu, http):
            job = await running_job(emu, http)
            assert 202 == (await cancel(http, job))[0]
            record = await emu.wait_for_state(job["request_id"], "COMPLETED")
            assert ("client_cancelled", True, False) == (
                record.error_type,
                record.cancelled,
                record.billed,
            )


async def ignored_pattern(seed: int, n: int) -> list[bool]:
    """Cancel ``n`` running jobs with cancel_running=0.5; which ones ran on to a billed end."""
    async with serving(cancel_running=0.5, workers=n, faults=Faults(seed=seed)) as (emu, http):
        emu.hold_jobs()
        jobs = [await submit(http, emu, edit_input(prompt=f"p{i}")) for i in range(n)]
        await emu.wait_jobs_held(n)
        for job in jobs:
            assert 202 == (await cancel(http, job))[0]
        emu.release_jobs()
        await emu.wait_completed(n)
        records = [emu.jobs[job["request_id"]] for job in jobs]
        assert [r.cancel_ignored for r in records] == [r.billed for r in records]
        assert all(r.cancelled != r.cancel_ignored for r in records)
        assert sum(r.billed for r in records) == emu.counters.cancels_ignored
        return [r.cancel_ignored for r in records]


async def test_a_seeded_fraction_of_running_cancels_is_ignored() -> None:
    """A float ignores about that fraction of running cancels, the same ones for the same seed."""
    first = await ignored_pattern(seed=11, n=100)
    assert 25 <= sum(first) <= 75  # 0.5 of 100, within 5 standard deviations
    assert first == await ignored_pattern(seed=11, n=100)


@pytest.mark.parametrize("value", ["stop", "Ignore", 1.5, -0.1, True, None])
def test_bad_cancel_running_is_refused(value: Any) -> None:
    """Anything but "honour", "ignore" or a probability is refused when building."""
    with pytest.raises(ValueError, match="cancel_running"):
        Emulator(cancel_running=value)


@pytest.mark.parametrize("after_enqueue", [False, True])
async def test_cancel_reset_with_or_without_effect(after_enqueue: bool) -> None:
    """A cancel whose connection drops did nothing, or (after_enqueue) stopped the job anyway."""
    async with serving() as (emu, http):
        job = await running_job(emu, http)
        # Twice: aiohttp silently resends an idempotent PUT once after a drop.
        emu.schedule_fault("cancel", "connection_reset", times=2, after_enqueue=after_enqueue)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await cancel(http, job)
        assert [0, 0] == [entry[3] for entry in emu.counters.request_log[-2:]]
        record = emu.jobs[job["request_id"]]
        if after_enqueue:
            await emu.wait_for_state(job["request_id"], "COMPLETED")
            assert ("client_cancelled", False) == (record.error_type, record.billed)
        else:
            assert ("IN_PROGRESS", False) == (record.state, record.cancelled)
            emu.release_jobs()
            await emu.wait_for_state(job["request_id"], "COMPLETED")
            assert record.billed


async def test_slow_cancel_takes_effect_when_answered() -> None:
    """A slow cancel leaves the job running while held, and stops it once answered."""
    async with serving() as (emu, http):
        job = await running_job(emu, http)
        emu.schedule_fault("cancel", "slow_response", delay=60)
        answers: list[tuple[int, Any]] = []

        async def put() -> None:
            answers.append(await cancel(http, job))

        async with anyio.create_task_group() as tg:
            tg.start_soon(put)
            await emu.wait_slow_held(1)
            assert ([], "IN_PROGRESS") == (answers, emu.jobs[job["request_id"]].state)
            emu.release_slow()
        assert [(202, {"status": "CANCELLATION_REQUESTED"})] == answers
        record = await emu.wait_for_state(job["request_id"], "COMPLETED")
        assert "client_cancelled" == record.error_type
