"""Test hooks: gates hold jobs and downloads still, waiters wake without sleeping."""

from __future__ import annotations

import aiohttp
import anyio
import pytest

from fal_edit_async.emulator import Emulator

from .emu_helpers import edit_input, submit


async def test_hold_queue_keeps_jobs_queued(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Held, the queue starts nothing; ``release_queue(1)`` starts exactly one job."""
    emu.hold_queue()
    jobs = [await submit(http, emu, edit_input(prompt=f"p{i}")) for i in range(3)]
    assert {"IN_QUEUE"} == {emu.jobs[j["request_id"]].state for j in jobs}
    emu.hold_jobs()
    emu.release_queue(1)
    await emu.wait_jobs_held(1)
    states = [emu.jobs[j["request_id"]].state for j in jobs]
    assert ["IN_PROGRESS", "IN_QUEUE", "IN_QUEUE"] == states
    emu.release_queue()
    emu.release_jobs()
    await emu.wait_completed(3)


async def test_workers_bound_concurrency() -> None:
    """No more than ``workers`` jobs are IN_PROGRESS at once; the peak is recorded."""
    async with Emulator(workers=2, fast_images=True) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            emu.hold_jobs()
            for i in range(5):
                await submit(http, emu, edit_input(prompt=f"p{i}"))
            await emu.wait_jobs_held(2)
            assert (2, 3) == (
                emu.counters.in_flight,
                sum(1 for job in emu.jobs.values() if job.state == "IN_QUEUE"),
            )
            emu.release_jobs()
            await emu.wait_completed(5)
    assert 2 == emu.counters.peak_in_flight
    assert 2 == max(emu.counters.in_flight_by_second.values())


async def test_release_jobs_counts(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """``release_jobs(n)`` lets exactly n held jobs finish; unused permits wait for later jobs."""
    emu.hold_jobs()
    for i in range(3):
        await submit(http, emu, edit_input(prompt=f"p{i}"))
    await emu.wait_jobs_held(3)
    emu.release_jobs(1)
    assert 2 == emu.jobs_held
    await emu.wait_completed(1)
    emu.release_jobs(3)  # two waiting now, one permit left for the next job
    await emu.wait_completed(3)
    await submit(http, emu, edit_input(prompt="late"))
    await emu.wait_completed(4)
    await submit(http, emu, edit_input(prompt="held again"))
    await emu.wait_jobs_held(1)
    assert 4 == emu.counters.completed


async def test_hold_downloads_and_peak(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Held downloads block before the body; the concurrent peak is recorded."""
    job = await submit(http, emu, edit_input(num_images=3))
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    emu.hold_downloads()
    bodies: list[bytes] = []

    async def download(url: str) -> None:
        async with cdn.get(url) as resp:
            bodies.append(await resp.read())

    async with aiohttp.ClientSession() as cdn, anyio.create_task_group() as tg:
        for url in record.output_urls:
            tg.start_soon(download, url)
        await emu.wait_downloads_held(3)
        assert (0, 3, 3) == (
            emu.counters.downloads,
            emu.counters.downloads_in_flight,
            emu.downloads_held,
        )
        emu.release_downloads(1)
        await emu.wait_until(lambda: emu.counters.downloads == 1)
        assert 2 == emu.downloads_held
        emu.release_downloads()
    assert (3, 3, 0) == (
        emu.counters.downloads,
        emu.counters.peak_downloads,
        emu.counters.downloads_in_flight,
    )
    assert 3 == len(bodies)


async def test_processing_time_and_log_lines() -> None:
    """Jobs run for ``processing_time`` (a number or a callable) and emit ``log_lines`` lines."""
    draws = iter([0.02, 0.0])
    async with Emulator(processing_time=lambda: next(draws), log_lines=5, fast_images=True) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            first = await submit(http, emu, edit_input(prompt="a"))
            record = await emu.wait_for_state(first["request_id"], "COMPLETED")
    assert record.metrics["inference_time"] >= 0.02
    assert 5 == len(record.logs)
    assert "[1/5]" in record.logs[0]["message"]


async def test_waiters_and_errors(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Waiters return at once when already true; an unknown id is a KeyError."""
    await emu.wait_submitted(0)
    job = await submit(http, emu)
    await emu.wait_submitted(1)
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert record is await emu.wait_for_state(job["request_id"], "IN_PROGRESS")
    with pytest.raises(KeyError):
        await emu.wait_for_state("nope", "COMPLETED")
    with pytest.raises(KeyError):
        emu.add_log("nope", "x")


async def test_lifecycle() -> None:
    """An emulator starts once; closing twice is harmless; it cannot restart."""
    emu = Emulator()
    assert "" == emu.queue_url
    async with emu:
        assert emu.queue_url != emu.cdn_url
        assert emu.rest_url == emu.queue_url
        with pytest.raises(RuntimeError):
            await emu.start()
    await emu.aclose()
    with pytest.raises(RuntimeError):
        await emu.start()


def test_constructor_checks() -> None:
    """Impossible options are refused when the emulator is built."""
    for options in ({"workers": 0}, {"log_lines": -1}, {"api_key": " "}):
        with pytest.raises(ValueError):
            Emulator(**options)


async def test_fail_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """``fail_job`` ends a queued or a running job at once with the given error."""
    emu.hold_jobs()
    running = await submit(http, emu, edit_input(prompt="running"))
    await emu.wait_jobs_held(1)
    emu.hold_queue()
    queued = await submit(http, emu, edit_input(prompt="queued"))
    emu.fail_job(running["request_id"])
    emu.fail_job(queued["request_id"], "validation")
    done = await emu.wait_for_state(running["request_id"], "COMPLETED")
    assert ("runner_disconnected", 503) == (done.error_type, done.result_status)
    assert (422, False) == (
        emu.jobs[queued["request_id"]].result_status,
        emu.jobs[queued["request_id"]].ran,
    )
    await emu.wait_until(lambda: emu.counters.in_flight == 0)
    assert 0 == emu.jobs_held
    with pytest.raises(ValueError):
        emu.fail_job(running["request_id"])
