"""AsyncClient and JobHandle against the emulator, over real loopback HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest

from fal_edit_async import (
    AsyncClient,
    AuthError,
    CancelOutcome,
    Completed,
    EditImageInput,
    InProgress,
    JobCancelledError,
    JobFailedError,
    JobHandle,
    JobStatus,
    JobTimeoutError,
    NotFoundError,
    Polling,
    Queued,
    RetryPolicy,
    TransportError,
)
from fal_edit_async.emulator import Emulator

from .conftest import client_for


@pytest.fixture
def edit_input(png_data_uri: str) -> EditImageInput:
    """A valid edit of the test image."""
    return EditImageInput(prompt="make it pixel art", image_urls=[png_data_uri], num_images=2)


def requests_to(emulator: Emulator, suffix: str) -> list[int]:
    """The HTTP status of each request the emulator answered on paths ending in ``suffix``."""
    return [status for _, _, path, status in emulator.counters.request_log if path.endswith(suffix)]


async def test_edit_returns_typed_images(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """One await submits, follows the job and returns its images on the CDN origin."""
    output = await client.edit(edit_input)

    assert 2 == len(output.images)
    assert all(image.url.startswith(emulator.cdn_url) for image in output.images)
    assert all("image/png" == image.content_type for image in output.images)
    assert 1 == emulator.counters.submits
    assert 1 == emulator.counters.result_fetches


async def test_updates_walk_through_every_state(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """updates() yields Queued, then InProgress, then Completed, each once."""
    emulator.hold_queue()
    emulator.hold_jobs()
    handle = await client.submit(edit_input)
    seen: list[JobStatus] = []
    async for update in handle.updates():
        seen.append(update)
        if isinstance(update, Queued):
            emulator.release_queue()
        elif isinstance(update, InProgress) and not any(
            isinstance(s, InProgress) for s in seen[:-1]
        ):
            emulator.release_jobs()

    kinds = [type(s) for s in seen]
    assert Queued == kinds[0]
    assert Completed == kinds[-1]
    assert InProgress in kinds
    assert 1 == emulator.counters.streams_opened
    assert 0 == emulator.counters.status_polls


async def test_updates_yield_each_new_queue_position(edit_input: EditImageInput) -> None:
    """updates() yields a new Queued each time the job moves up the queue: 2, then 1, then 0."""
    polling = Polling(use_stream=False, queued_interval=0.01, max_interval=0.02)
    async with Emulator(workers=1, fast_images=True) as emu, client_for(emu, polling=polling) as c:
        emu.hold_jobs()  # the first job runs and stays; the others queue behind it
        ahead = [await c.submit(edit_input) for _ in range(3)]
        handle = await c.submit(edit_input)
        positions: list[int] = []

        async def follow() -> None:
            async for update in handle.updates(logs=False):
                if isinstance(update, Queued):
                    positions.append(update.position)

        async def a_poll_answered_from_now() -> None:
            polls = emu.counters.status_polls
            await emu.wait_until(lambda: emu.counters.status_polls > polls)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            for job in ahead[1:]:
                await a_poll_answered_from_now()  # the client has seen this position
                emu.release_jobs(1)  # the running job ends, the next one starts
                await emu.wait_for_state(job.request_id, "IN_PROGRESS")
            await a_poll_answered_from_now()
            emu.release_jobs()

    assert [2, 1, 0] == positions


async def test_logs_arrive_once_across_dropped_streams(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """Each log line is yielded exactly once although the stream drops twice mid-job."""
    emulator.hold_jobs()
    emulator.schedule_fault("stream", "stream_drop", times=2)
    handle = await client.submit(edit_input)
    await emulator.wait_for_state(handle.request_id, "IN_PROGRESS")
    messages: list[str] = []

    async def consume() -> None:
        async for entry in handle.logs():
            messages.append(entry.message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await emulator.wait_until(lambda: emulator.counters.streams_opened == 3)
        await emulator.wait_status_stream_open(handle.request_id)
        for n in range(4):
            emulator.add_log(handle.request_id, f"step {n}")
        emulator.release_jobs()

    expected = [line["message"] for line in emulator.jobs[handle.request_id].logs]
    assert expected == messages
    assert {"step 0", "step 3"} <= set(messages)
    assert 2 == emulator.counters.faults_injected["stream_drop"]
    assert 3 == emulator.counters.streams_opened


async def test_stream_that_drops_but_moves_the_job_on_is_kept(
    emulator: Emulator, edit_input: EditImageInput
) -> None:
    """Drops count towards the polling fallback only in a row without progress."""
    polling = Polling(stream_failures=2)  # a second drop in a row without progress falls back
    emulator.hold_queue()
    emulator.hold_jobs()
    emulator.schedule_fault("stream", "stream_drop")  # 1st stream: Queued, then dropped
    emulator.schedule_fault("stream", "slow_response", delay=3600)  # 2nd: held until released
    emulator.schedule_fault("stream", "stream_drop")  # ...then InProgress, then dropped
    counters = emulator.counters
    async with client_for(emulator, polling=polling) as client:
        handle = await client.submit(edit_input)
        kinds: list[type[JobStatus]] = []

        async def follow() -> None:
            async for update in handle.updates(logs=False):
                kinds.append(type(update))

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await emulator.wait_slow_held(1)  # the client reconnects after the first drop
            emulator.release_queue()  # the job starts: the next stream shows progress
            emulator.release_slow()
            # The third stream stays open; a client that gave up on streams polls instead.
            await emulator.wait_until(
                lambda: counters.streams_opened >= 3 or counters.status_polls > 0
            )
            emulator.release_jobs()

    assert [Queued, InProgress, Completed] == kinds
    assert (3, 0) == (counters.streams_opened, counters.status_polls)
    assert 2 == counters.faults_injected["stream_drop"]


async def test_polling_fallback_when_stream_refused(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A refused status stream makes the client poll, and the job still completes."""
    emulator.schedule_fault("stream", "refuse_stream", status=405)
    handle = await client.submit(edit_input)

    completed = await handle.wait()

    assert not completed.failed
    assert emulator.counters.status_polls >= 1
    assert 1 == client.statistics().stream_refused


async def test_polling_only_client(emulator: Emulator, edit_input: EditImageInput) -> None:
    """With the stream turned off the client never opens one and still gets the result."""
    polling = Polling(
        use_stream=False, queued_interval=0.01, in_progress_interval=0.01, max_interval=0.02
    )
    async with client_for(emulator, polling=polling) as client:
        output = await client.edit(edit_input)

    assert 2 == len(output.images)
    assert 0 == emulator.counters.streams_opened


async def test_polling_logs_once(emulator: Emulator, edit_input: EditImageInput) -> None:
    """Polling returns cumulative logs; the handle still yields each line once."""
    polling = Polling(
        use_stream=False, queued_interval=0.01, in_progress_interval=0.01, max_interval=0.02
    )
    async with client_for(emulator, polling=polling) as client:
        emulator.hold_jobs()
        handle = await client.submit(edit_input)
        await emulator.wait_for_state(handle.request_id, "IN_PROGRESS")
        emulator.add_log(handle.request_id, "extra line")
        emulator.release_jobs()
        messages = [entry.message async for entry in handle.logs()]

    expected = [line["message"] for line in emulator.jobs[handle.request_id].logs]
    assert expected == messages


async def test_cancel_queued_job_never_runs(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """Cancelling a queued job answers REQUESTED, and the job never runs."""
    emulator.hold_queue()
    handle = await client.submit(edit_input)

    assert CancelOutcome.REQUESTED == await handle.cancel()
    emulator.release_queue()
    with pytest.raises(JobCancelledError):
        await handle.result()
    assert not emulator.jobs[handle.request_id].ran


async def test_wait_without_logs_asks_for_none(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """``wait(logs=False)`` opens its status stream without ``?logs=1`` and returns no log
    lines; the default asks for them and returns them."""
    handle = await client.submit(edit_input)
    quiet = await handle.wait(logs=False)
    assert ((), 0) == (quiet.logs, emulator.counters.streams_with_logs)

    loud = await (await client.submit(edit_input)).wait()
    assert loud.logs
    assert 1 == emulator.counters.streams_with_logs


async def test_cancel_running_job(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """Cancelling a running job ends it COMPLETED with client_cancelled."""
    emulator.hold_jobs()
    handle = await client.submit(edit_input)
    await emulator.wait_for_state(handle.request_id, "IN_PROGRESS")

    assert CancelOutcome.REQUESTED == await handle.cancel()
    completed = await handle.wait()

    assert "client_cancelled" == completed.error_type
    with pytest.raises(JobCancelledError, match=handle.request_id):
        await handle.fetch_result(completed)


async def test_cancel_outcomes_after_completion_and_for_unknown_ids(
    client: AsyncClient, edit_input: EditImageInput
) -> None:
    """A finished job answers ALREADY_COMPLETED and an unknown id NOT_FOUND, not errors."""
    handle = await client.submit(edit_input)
    await handle.wait()

    assert CancelOutcome.ALREADY_COMPLETED == await handle.cancel()
    assert CancelOutcome.NOT_FOUND == await client.cancel("no-such-request")


async def test_deadline_cancels_the_job(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """When edit's timeout passes, the fal job is cancelled and JobTimeoutError raised."""
    emulator.hold_queue()

    with pytest.raises(JobTimeoutError) as caught:
        await client.edit(edit_input, timeout=0.3)

    assert 1 == emulator.counters.cancels
    (job,) = emulator.jobs.values()
    assert job.cancelled and not job.ran
    assert job.request_id == caught.value.request_id
    assert 0.3 == caught.value.timeout


async def test_a_deadline_during_the_submit_cancels_the_job_it_queued(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """edit's timeout covers the submit: when it passes while the (shielded) POST is still
    out, the job fal then queues is cancelled, and JobTimeoutError names it."""
    # The first request loads the system's certificates in a thread; on a loaded machine that
    # can outlast the deadline, and then rightly nothing is sent. Load them before the clock runs.
    await client._core.prepare()
    emulator.schedule_fault("submit", "slow_response", delay=60.0)
    caught: list[BaseException] = []

    async def edit() -> None:
        try:
            await client.edit(edit_input, timeout=0.2)
        except JobTimeoutError as exc:
            caught.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(edit)
            await emulator.wait_slow_held(1)  # the job is queued, its answer held
            await anyio.sleep(0.3)  # not a synchronisation: the deadline must pass meanwhile
            emulator.release_slow()

    (job,) = emulator.jobs.values()
    assert (1, True) == (emulator.counters.cancels, job.cancelled)
    (error,) = caught
    assert isinstance(error, JobTimeoutError)
    assert job.request_id == error.request_id


async def test_cancelled_caller_cancels_the_job(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """Cancelling the task awaiting edit() cancels the job on fal, leaving no task behind."""
    emulator.hold_jobs()
    tasks_before = asyncio.all_tasks()
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.edit, edit_input)
        await emulator.wait_in_flight(1)
        tg.cancel_scope.cancel()

    (job,) = emulator.jobs.values()
    await emulator.wait_for_state(job.request_id, "COMPLETED")
    assert 1 == emulator.counters.cancels
    assert "client_cancelled" == job.error_type
    # The emulator's server keeps idle keep-alive connections as tasks; only ours count.
    leftover = [
        t.get_coro()
        for t in asyncio.all_tasks() - tasks_before
        if "RequestHandler" not in t.get_coro().__qualname__  # type: ignore[union-attr]
    ]
    assert [] == leftover


async def test_cancel_during_submit_still_cancels(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A caller cancelled while its submit POST is in flight still gets the job cancelled."""
    emulator.schedule_fault("submit", "slow_response", delay=30.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.edit, edit_input)
        await emulator.wait_slow_held(1)
        tg.cancel_scope.cancel()
        emulator.release_slow()

    assert 1 == emulator.counters.submits
    assert 1 == emulator.counters.cancels


async def test_rate_limit_waits_as_told(
    emulator: Emulator, edit_input: EditImageInput, sleeps: list[float]
) -> None:
    """A 429 with Retry-After: 3 on status makes the client wait 3 s, not its own backoff."""
    async with client_for(emulator, retry=RetryPolicy(base_delay=0.0)) as client:
        handle = await client.submit(edit_input)
        await handle.wait()
        emulator.schedule_fault("status", "rate_limit", retry_after=3)
        assert isinstance(await handle.status(), Completed)

    assert [3.0] == sleeps
    assert [429, 200] == requests_to(emulator, "/status")


async def test_ambiguous_submit_failure_is_not_repeated(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A connection reset after the job was enqueued is reported, never re-sent."""
    emulator.schedule_fault("submit", "connection_reset", after_enqueue=True)

    with pytest.raises(TransportError):
        await client.submit(edit_input)

    assert 1 == emulator.counters.submits
    assert 1 == emulator.counters.submit_attempts
    assert [1] == list(emulator.counters.submits_by_input.values())


async def test_ingress_error_on_submit_is_retried(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A gateway 502 without a request id cannot have enqueued the job, so it is retried."""
    emulator.schedule_fault("submit", "ingress_error", times=2)

    handle = await client.submit(edit_input)

    assert handle.request_id in emulator.jobs
    posts = [status for _, method, _, status in emulator.counters.request_log if method == "POST"]
    assert [502, 502, 200] == posts
    assert 1 == emulator.counters.submits
    assert 2 == client.statistics().retries.server_error


async def test_transient_status_errors_are_retried(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """500s and resets on status and result are retried until they succeed."""
    handle = await client.submit(edit_input)
    await handle.wait()
    emulator.schedule_fault("status", "server_error", times=2)
    emulator.schedule_fault("result", "connection_reset")

    assert isinstance(await handle.status(), Completed)
    assert 2 == len((await handle.fetch_result()).images)


async def test_cdn_never_sees_the_key(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """Downloading outputs through the client sends no Authorization to the CDN."""
    output = await client.edit(edit_input)
    files = await client.download(output, tmp_path)

    assert 2 == len(files)
    assert 2 == emulator.counters.downloads
    assert 0 == emulator.counters.cdn_auth_requests


async def test_wrong_key_is_an_auth_error(png_data_uri: str) -> None:
    """A key the emulator refuses gives AuthError telling the user to set FAL_KEY."""
    async with Emulator(api_key="right-key") as emu, client_for(emu, api_key="wrong") as client:
        with pytest.raises(AuthError, match="FAL_KEY") as caught:
            await client.submit(EditImageInput(prompt="x", image_urls=[png_data_uri]))
    assert 401 == caught.value.status
    assert "wrong" not in str(caught.value)


async def test_model_error_raises_job_failed_with_fields(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A job the model rejects raises JobFailedError with the 422 field errors and logs."""
    emulator.schedule_fault("job", "model_failure", error_type="validation")

    with pytest.raises(JobFailedError) as caught:
        await client.edit(edit_input)

    error = caught.value
    assert 422 == error.status
    assert error.request_id in str(error)
    assert isinstance(error.detail, dict) and isinstance(error.detail["detail"], list)


async def test_infrastructure_failure_is_marked(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A runner failure surfaces as JobFailedError with fal's error type."""
    emulator.schedule_fault("job", "model_failure", error_type="runner_disconnected")

    with pytest.raises(JobFailedError) as caught:
        await client.edit(edit_input)

    assert "runner_disconnected" == caught.value.error_type


async def test_unknown_request_id_on_reattach(client: AsyncClient) -> None:
    """Re-attaching to an unknown request id raises NotFoundError naming it."""
    with pytest.raises(NotFoundError, match="unknown request"):
        await client.status("0000-unknown")


async def test_reattach_by_request_id(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A handle rebuilt from the request id alone finds the job and its result."""
    handle = await client.submit(edit_input)

    output = await client.result(handle.request_id)

    assert [u for u in emulator.jobs[handle.request_id].output_urls] == [
        i.url for i in output.images
    ]


async def test_on_update_accepts_sync_and_async_callbacks(
    client: AsyncClient, edit_input: EditImageInput
) -> None:
    """edit() calls on_update with every update, whether the callback is sync or async."""
    sync_seen: list[Any] = []
    async_seen: list[Any] = []

    async def record(update: JobStatus) -> None:
        async_seen.append(update)

    await client.edit(edit_input, on_update=sync_seen.append)
    await client.edit(edit_input, on_update=record)

    assert isinstance(sync_seen[-1], Completed)
    assert isinstance(async_seen[-1], Completed)


async def test_submit_options_reach_the_server(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """Priority, hint, start timeout and webhook are sent as fal expects them."""
    handle = await client.submit(
        edit_input,
        priority="low",
        hint="gpu-7",
        start_timeout=30,
        webhook_url="http://127.0.0.1:9/hook",
    )

    job = emulator.jobs[handle.request_id]
    assert ("low", "gpu-7", 30.0) == (job.priority, job.hint, job.timeout)
    assert "http://127.0.0.1:9/hook" == job.webhook_url
    assert "/edit-image/" not in handle.urls.status_url


async def test_closed_client_refuses_use(emulator: Emulator, edit_input: EditImageInput) -> None:
    """After aclose() a client refuses requests, and a second aclose() is harmless."""
    client = client_for(emulator)
    await client.aclose()
    await client.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await client.submit(edit_input)


async def test_closing_under_waiters_cancels_each_job_and_interrupts_its_waiter(
    emulator: Emulator, edit_input: EditImageInput
) -> None:
    """aclose() under three waiters cancels the jobs of the two that own their cancel,
    together, not the one that left it to its caller (cancel_on_exit=False, as a batch);
    each stops at once with the closed client's RuntimeError, though fal never answers its
    stream again; the client refuses everything after, cancels included."""
    emulator.hold_jobs()
    client = client_for(emulator)
    handles = [await client.submit(edit_input) for _ in range(3)]
    errors: list[RuntimeError] = []

    async def waiter(handle: JobHandle, cancel_on_exit: bool) -> None:
        try:
            await handle.wait(cancel_on_exit=cancel_on_exit)
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for handle, owned in zip(handles, (True, True, False), strict=True):
            tg.start_soon(waiter, handle, owned)
            await emulator.wait_status_stream_open(handle.request_id)
        await client.aclose()

    assert (3, 2) == (len(errors), emulator.counters.cancels)
    assert [True, True, False] == [emulator.jobs[h.request_id].cancelled for h in handles]
    assert None is await handles[0].cancel_quietly()
    with pytest.raises(RuntimeError, match="closed"):
        await handles[0].cancel()


async def test_polling_intervals_back_off(
    emulator: Emulator, edit_input: EditImageInput, sleeps: list[float]
) -> None:
    """Polling a queued job that does not move backs off, doubling up to max_interval."""
    polling = Polling(use_stream=False, queued_interval=1.0, max_interval=8.0, backoff=2.0)
    emulator.hold_queue()
    async with client_for(emulator, polling=polling) as client:
        handle = await client.submit(edit_input)
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.wait)
            await emulator.wait_until(lambda: emulator.counters.status_polls >= 6)
            tg.cancel_scope.cancel()

    assert [1.0, 2.0, 4.0, 8.0, 8.0] == sleeps[:5]


async def test_stream_rate_limit_waits_as_told(
    emulator: Emulator, edit_input: EditImageInput, sleeps: list[float]
) -> None:
    """A 429 with Retry-After: 3 on the status stream delays the reconnect by 3 s."""
    emulator.schedule_fault("stream", "rate_limit", retry_after=3)
    async with client_for(emulator, retry=RetryPolicy(base_delay=0.0)) as client:
        handle = await client.submit(edit_input)
        await handle.wait()

    assert [3.0] == sleeps
    assert [429, 200] == requests_to(emulator, "/stream")
    assert 0 == emulator.counters.status_polls


async def test_retry_after_is_capped(
    emulator: Emulator, edit_input: EditImageInput, sleeps: list[float]
) -> None:
    """A Retry-After of an hour is cut to RetryPolicy.max_retry_after before the retry."""
    emulator.schedule_fault("submit", "rate_limit", retry_after=3600)
    retry = RetryPolicy(base_delay=0.0, max_retry_after=7.0)
    async with client_for(emulator, retry=retry) as client:
        handle = await client.submit(edit_input)

    assert [7.0] == sleeps
    assert [429, 200] == [status for _, method, _, status in emulator.counters.request_log]
    assert handle.request_id in emulator.jobs


async def test_callback_timeout_is_not_taken_for_the_deadline(
    client: AsyncClient, emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A TimeoutError raised by on_update propagates as is, not as the deadline's
    JobTimeoutError; the job is cancelled, as for any error of the callback."""

    def impatient(update: JobStatus) -> None:
        raise TimeoutError("the caller's own")

    with pytest.raises(TimeoutError, match="the caller's own") as caught:
        await client.edit(edit_input, timeout=60, on_update=impatient)

    assert not isinstance(caught.value, JobTimeoutError)
    assert 1 == emulator.counters.cancels
