"""The client against the emulator in its fal-like profile: one test per row of
docs/fidelity.md, each in the mode that reproduces what the live service does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import attrs
import pytest
from aiohttp import web

from fal_edit_async import (
    AsyncClient,
    AuthError,
    BillingError,
    CancelOutcome,
    Completed,
    EditImageInput,
    ItemState,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    Polling,
    ProtocolError,
    Queued,
    RetryPolicy,
    __version__,
)
from fal_edit_async.emulator import FAL_PROFILE, Emulator, Profile

from .conftest import client_for


@pytest.fixture
async def fal_emu() -> AsyncIterator[Emulator]:
    """The emulator playing the live service (Emulator.fal_like)."""
    async with Emulator.fal_like(workers=4, fast_images=True) as emu:
        yield emu
        assert [] == emu.internal_errors


@pytest.fixture
async def fal(fal_emu: Emulator) -> AsyncIterator[AsyncClient]:
    """A client on the fal-like emulator; REST on its own origin, as on fal."""
    assert fal_emu.rest_url != fal_emu.queue_url
    async with client_for(fal_emu) as client:
        yield client


def _posts(emu: Emulator) -> int:
    """Submit POSTs that reached the emulator, whatever it answered."""
    return sum(1 for _, method, _, _ in emu.counters.request_log if method == "POST")


def edit_input(uri: str, n: int = 0) -> EditImageInput:
    """One edit of ``uri``; ``n`` makes it a distinct input."""
    return EditImageInput(prompt=f"make it pixel art #{n}", image_urls=[uri])


async def test_edit_runs_on_a_202_stream_with_sloppy_logs(
    fal_emu: Emulator, fal: AsyncClient, png_bytes: bytes
) -> None:
    """A 202 status stream is read (no polling), a local file goes through a REST origin of
    its own, and log lines with message null and numeric timestamps are kept."""
    handle = await fal.submit(EditImageInput(prompt="p", image_urls=[png_bytes]))
    completed = await handle.wait()
    output = await handle.fetch_result(completed)

    assert 1 == len(output.images)
    stats = fal.statistics()
    assert 0 == stats.polling_fallbacks
    assert 1 <= stats.streams_opened
    assert 3 == len(completed.logs)
    assert "" == completed.logs[2].message  # fal sent null
    assert all(entry.timestamp is not None for entry in completed.logs)
    assert {} == dict(completed.metrics)  # fal sent null
    assert 0 == fal_emu.counters.unauthorized


@pytest.mark.parametrize("use_stream", [True, False], ids=["stream", "poll"])
async def test_queue_position_null_or_missing_is_a_queued_update(
    fal_emu: Emulator, png_data_uri: str, use_stream: bool
) -> None:
    """IN_QUEUE with queue_position null (polls) or missing (stream events) is Queued(None)."""
    fal_emu.hold_queue()
    polling = Polling(use_stream=use_stream, queued_interval=0.01, in_progress_interval=0.01)
    async with client_for(fal_emu, polling=polling) as client:
        await client.submit(edit_input(png_data_uri, 1))
        second = await client.submit(edit_input(png_data_uri, 2))
        if not use_stream:
            assert None is _position(await second.status())
        async with anyio.create_task_group() as tg:
            seen: list[object] = []

            async def follow() -> None:
                async for update in second.updates():
                    seen.append(update)
                    if isinstance(update, Queued):
                        fal_emu.release_queue()

            tg.start_soon(follow)
        assert None is _position(seen[0])
        assert isinstance(seen[-1], Completed)


def _position(status: object) -> int | None:
    assert isinstance(status, Queued)
    return status.position


async def test_cancel_of_a_completed_job_answered_with_detail(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """fal's 400 {"detail": ...} to a cancel is fal declining it, not an error."""
    handle = await fal.submit(edit_input(png_data_uri))
    await handle.wait()

    assert CancelOutcome.ALREADY_COMPLETED == await handle.cancel()


async def test_cancel_of_a_running_job_is_best_effort(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """fal accepts the cancel of a running job, which may still finish and bill."""
    fal_emu.hold_jobs()
    handle = await fal.submit(edit_input(png_data_uri))
    await fal_emu.wait_jobs_held(1)

    assert CancelOutcome.REQUESTED == await handle.cancel()
    fal_emu.release_jobs()
    output = await handle.result()
    assert 1 == len(output.images)
    assert 1 == fal_emu.counters.billed


async def test_rate_limit_without_retry_after_is_retried_with_backoff(
    fal_emu: Emulator, png_data_uri: str, sleeps: list[float]
) -> None:
    """fal's 429 carries X-Fal-Needs-Retry and no Retry-After: backoff decides the wait."""
    fal_emu.schedule_fault("submit", "rate_limit", retry_after=30)
    retry = RetryPolicy(base_delay=0.5, max_delay=0.5)
    async with client_for(fal_emu, retry=retry) as client:
        await client.submit(edit_input(png_data_uri))

    assert 1 == client.statistics().retries.rate_limit
    assert 1 == len(sleeps)
    assert 0 <= sleeps[0] <= 0.5  # full-jitter backoff, not the 30 s a Retry-After would say


@pytest.mark.parametrize(
    ("kind", "status"),
    [pytest.param("payment_required", 402, id="402"), pytest.param("user_locked", 403, id="403")],
)
async def test_an_account_that_cannot_pay_is_a_billing_error(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str, kind: str, status: int
) -> None:
    """402 and 403 "User is locked" say to add credit, not to set FAL_KEY."""
    fal_emu.schedule_fault("submit", kind)
    with pytest.raises(BillingError) as caught:
        await fal.submit(edit_input(png_data_uri))

    assert status == caught.value.status
    assert "add credit" in str(caught.value)
    assert "FAL_KEY" not in str(caught.value)
    assert 0 == fal_emu.counters.submits


async def test_a_wrong_key_is_refused_with_the_right_advice(
    fal_emu: Emulator, png_data_uri: str
) -> None:
    """The fal-like emulator requires its key; a 401 says to set FAL_KEY."""
    async with client_for(fal_emu, api_key="not-the-key") as client:
        with pytest.raises(AuthError) as caught:
            await client.submit(edit_input(png_data_uri))

    assert not isinstance(caught.value, BillingError)
    assert 401 == caught.value.status
    assert "FAL_KEY" in str(caught.value)


@pytest.mark.parametrize("kind", ["user_locked", "payment_required"])
async def test_a_batch_stops_submitting_when_the_account_is_refused(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str, kind: str
) -> None:
    """After one billing refusal no other item is sent: each would be refused too."""
    fal_emu.schedule_fault("submit", kind)
    items = [edit_input(png_data_uri, n) for n in range(4)]
    async with fal.edit_many(items, concurrency=1) as batch:
        results = [r async for r in batch]

    states = sorted(r.state for r in results)
    assert [ItemState.FAILED] + [ItemState.NOT_SUBMITTED] * 3 == states
    assert all(isinstance(r.error, BillingError) for r in results)
    assert 1 == _posts(fal_emu)


async def test_a_loopback_input_url_fails_the_job(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """fal cannot fetch an input from your machine: the job fails with the model's 422."""
    url = fal_emu.cdn_url.replace("127.0.0.1", "localhost") + "/files/nowhere.png"
    with pytest.raises(JobFailedError) as caught:
        await fal.edit(edit_input(url))

    assert 422 == caught.value.status
    assert "loopback" in str(caught.value)


async def test_an_unknown_request_id_completed_then_404_is_not_found(
    fal_emu: Emulator, fal: AsyncClient
) -> None:
    """fal answers COMPLETED for an id it does not know, then 404 for its result."""
    handle = fal.handle(str(uuid.uuid4()))
    completed = await handle.wait()
    assert not completed.failed

    with pytest.raises(NotFoundError, match="does not know it, or its result expired"):
        await handle.fetch_result(completed)


async def test_an_expired_result_is_not_found(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """A result fal no longer keeps is a NotFoundError naming the job, not a failed job."""
    handle = await fal.submit(edit_input(png_data_uri))
    completed = await handle.wait()
    fal_emu.expire_result(handle.request_id)

    with pytest.raises(NotFoundError) as caught:
        await handle.fetch_result(completed)
    assert handle.request_id == caught.value.request_id


async def test_a_result_answering_202_after_completed_is_asked_again(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """A result GET that answers 202 {"status": "IN_PROGRESS"} is not ready: retried."""
    handle = await fal.submit(edit_input(png_data_uri))
    completed = await handle.wait()
    fal_emu.schedule_fault("result", "result_in_progress", status=202, times=2)

    output = await handle.fetch_result(completed)
    assert 1 == len(output.images)
    assert 3 == fal_emu.counters.result_fetches


async def test_an_unknown_status_ends_the_wait_after_a_bound(
    fal_emu: Emulator, png_data_uri: str
) -> None:
    """A status value the client does not know never makes it wait for ever."""
    polling = Polling(
        use_stream=False, queued_interval=0, in_progress_interval=0, max_unknown_statuses=3
    )
    fal_emu.hold_jobs()
    async with client_for(fal_emu, polling=polling) as client:
        handle = await client.submit(edit_input(png_data_uri))
        fal_emu.schedule_fault("status", "unknown_status", times=50)
        with pytest.raises(ProtocolError, match="max_unknown_statuses") as caught:
            await handle.wait(cancel_on_exit=False)

    assert handle.request_id == caught.value.request_id
    fal_emu.release_jobs()


async def test_a_bare_504_after_the_queue_stored_the_submit_is_not_retried(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """Only an nginx ingress page proves a 5xx never reached the queue; a load balancer's
    bare 504 may follow a stored POST, so the item is unknown, never paid twice."""
    fal_emu.schedule_fault("submit", "gateway_timeout_after_queue")
    async with fal.edit_many([edit_input(png_data_uri)]) as batch:
        results = [r async for r in batch]

    assert ItemState.UNKNOWN == results[0].state
    assert 1 == _posts(fal_emu)
    assert 1 == fal_emu.counters.submits


async def test_an_nginx_ingress_error_on_submit_is_retried(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """fal's ingress page (nginx, no request id) is the one 5xx a submit is retried on."""
    fal_emu.schedule_fault("submit", "ingress_error", status=503)
    await fal.submit(edit_input(png_data_uri))

    assert 2 == _posts(fal_emu)
    assert 1 == fal_emu.counters.submits


async def test_submit_sends_both_start_timeout_headers_and_a_versioned_user_agent(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """X-Fal-Request-Start-Timeout (documented) and X-Fal-Request-Timeout (what fal-client
    sends); the User-Agent names this client's version, as fal-client's does."""
    handle = await fal.submit(edit_input(png_data_uri), start_timeout=30)
    headers = fal_emu.jobs[handle.request_id].headers

    assert "30.0" == headers["X-Fal-Request-Start-Timeout"]
    assert "30.0" == headers["X-Fal-Request-Timeout"]
    assert f"fal-edit-async/{__version__} (python)" == headers["User-Agent"]
    assert 30.0 == fal_emu.jobs[handle.request_id].timeout


async def test_edit_timeout_covers_submit_retries(png_data_uri: str) -> None:
    """Two 429s with Retry-After 8 and edit(timeout=0.2): the deadline ends it, and no
    submit goes out after it. (The documented profile: fal's own 429s say no delay.)"""
    async with Emulator(fast_images=True) as emu:
        emu.schedule_fault("submit", "rate_limit", times=2, retry_after=8)
        async with client_for(emu, retry=RetryPolicy(max_retry_after=8)) as client:
            with anyio.fail_after(5):
                with pytest.raises(JobTimeoutError):
                    await client.edit(edit_input(png_data_uri), timeout=0.2)

        assert 1 == _posts(emu)
        assert 0 == emu.counters.submits


async def test_edit_with_no_time_left_sends_no_submit(
    fal_emu: Emulator, fal: AsyncClient, png_data_uri: str
) -> None:
    """edit(timeout=0) times out before its (shielded) submit POST is sent."""
    with pytest.raises(JobTimeoutError):
        await fal.edit(edit_input(png_data_uri), timeout=0)

    assert 0 == _posts(fal_emu)


async def test_the_http_proxy_from_the_environment_is_used(
    fal_emu: Emulator, png_data_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured as fal-client honours it, and NO_PROXY exempts a host."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.json_response({"detail": "proxy says no"}, status=403)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with client_for(fal_emu) as client:
            with pytest.raises(AuthError, match="proxy says no"):
                await client.submit(edit_input(png_data_uri))
        assert [f"{fal_emu.queue_url}/fal-ai/gpt-image-1/edit-image"] == seen

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with client_for(fal_emu) as client:
            await client.submit(edit_input(png_data_uri))
        assert 1 == len(seen)
    finally:
        await runner.cleanup()


def test_the_fal_profile_turns_every_switch_on() -> None:
    """FAL_PROFILE differs from the documented behaviour in every switch."""
    documented = Profile()
    for field in attrs.fields(Profile):
        assert getattr(FAL_PROFILE, field.name) != getattr(documented, field.name), field.name
