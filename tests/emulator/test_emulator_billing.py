"""Billing: only a job that completes with output is paid for, once per job."""

from __future__ import annotations

import aiohttp
import pytest

from fal_edit_async.emulator import Emulator, input_key

from .emu_helpers import edit_input, get_json, submit


async def test_completed_job_is_billed_per_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A job that completes with output is billed, fetched or not; each submit is one more."""
    body = edit_input(prompt="paid")
    first = await submit(http, emu, body)
    record = await emu.wait_for_state(first["request_id"], "COMPLETED")
    assert (True, None) == (record.billed, record.result_fetched_at)
    assert (1, {input_key(body): 1}) == (emu.counters.billed, dict(emu.counters.billed_by_input))

    await submit(http, emu, body)  # the same input again: fal bills it again
    await emu.wait_completed(2)
    assert 2 == emu.counters.billed_by_input[input_key(body)]
    assert 2 == emu.counters.billed


@pytest.mark.parametrize(
    "error_type",
    [
        pytest.param("validation", id="model-refusal-422"),
        pytest.param("runner_disconnected", id="runner-503"),
        pytest.param("runner_server_error", id="runner-500"),
        pytest.param("runner_incomplete_response", id="runner-502"),
        pytest.param("internal_error", id="internal-500"),
    ],
)
async def test_failed_job_is_not_billed(
    emu: Emulator, http: aiohttp.ClientSession, error_type: str
) -> None:
    """A model refusal or a runner or server error completes the job unpaid."""
    emu.schedule_fault("job", "model_failure", error_type=error_type)
    job = await submit(http, emu)
    record = await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert record.failed
    assert (False, 0, 0) == (record.billed, emu.counters.billed, len(emu.counters.billed_by_input))


async def test_invalid_input_is_not_billed(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """An input the model rejects (422 with a detail list) is not billed."""
    job = await submit(http, emu, edit_input(num_images=9))
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    assert 422 == (await get_json(http, job["response_url"]))[0]
    assert 0 == emu.counters.billed


async def test_cancelled_and_timed_out_jobs_are_not_billed(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Jobs cancelled while queued or while running, or timed out in the queue, are not billed."""
    emu.hold_jobs()
    running = await submit(http, emu, edit_input(prompt="running"))
    await emu.wait_jobs_held(1)
    emu.hold_queue()
    queued = await submit(http, emu, edit_input(prompt="queued"))
    expired = await submit(http, emu, edit_input(prompt="expired"))
    for job in (running, queued):
        async with http.put(job["cancel_url"]) as resp:
            assert 202 == resp.status
    emu.fail_job(expired["request_id"], "request_timeout")
    await emu.wait_completed(3)
    assert {"client_cancelled", "request_timeout"} == {job.error_type for job in emu.jobs.values()}
    assert (0, 0) == (emu.counters.billed, len(emu.counters.billed_by_input))
