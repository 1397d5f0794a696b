"""edit_many against the emulator: limits, failures, retries, cancellation, files on disk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from PIL import Image

from fal_edit_async import (
    AsyncClient,
    BatchEvent,
    BudgetExceededError,
    CancelOutcome,
    DownloadError,
    EditImageInput,
    InputError,
    ItemCompleted,
    ItemDownloaded,
    ItemFailed,
    ItemResult,
    ItemStarted,
    ItemState,
    ItemSubmitted,
    JobFailedError,
    Limits,
    estimate_batch,
)
from fal_edit_async.emulator import Emulator

from .conftest import client_for


def item(uri: str, n: int = 0, **options: Any) -> dict[str, Any]:
    """One manifest-style item; ``n`` makes the prompt (and so the key) unique."""
    return {"prompt": f"make it pixel art #{n}", "image_urls": [uri], **options}


async def run_all(client: AsyncClient, items: Any, **options: Any) -> list[ItemResult]:
    """Run a batch to the end and return every result."""
    async with client.edit_many(items, **options) as batch:
        return [result async for result in batch]


async def test_jobs_in_flight_never_exceed_concurrency(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """With jobs held, exactly `concurrency` are submitted; the rest wait their turn."""
    emulator.hold_jobs()
    items = [item(png_data_uri, n) for n in range(10)]
    async with client.edit_many(items, concurrency=3) as batch:
        await emulator.wait_in_flight(3)
        await emulator.wait_until(lambda: emulator.counters.streams_opened >= 3)
        await anyio.wait_all_tasks_blocked()
        assert 3 == emulator.counters.submits
        emulator.release_jobs()
        results = [r async for r in batch]

    assert 10 == sum(r.ok for r in results)
    assert 3 == emulator.counters.peak_in_flight


async def test_downloads_never_exceed_their_limit(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """With downloads held, exactly `downloads` are in progress at once."""
    emulator.hold_downloads()
    items = [item(png_data_uri, n) for n in range(6)]
    async with client.edit_many(items, concurrency=6, downloads=2, download_to=tmp_path) as batch:
        await emulator.wait_downloads_held(2)
        await anyio.wait_all_tasks_blocked()
        assert 2 == emulator.downloads_held
        emulator.release_downloads()
        results = [r async for r in batch]

    assert 6 == sum(r.ok for r in results)
    assert 2 == emulator.counters.peak_downloads
    assert 6 == len(list(tmp_path.glob("*.png")))


async def test_bad_items_and_server_failures_never_stop_the_rest(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """Of 1,000 items, 5% invalid and 5% refused by the model fail with causes; the rest pass."""
    items = [
        item(png_data_uri, n, num_images=0) if n % 20 == 7 else item(png_data_uri, n)
        for n in range(1000)
    ]
    emulator.schedule_fault("job", "model_failure", times=50, error_type="validation")

    results = await run_all(client, items, concurrency=32)

    assert 1000 == len(results)
    by_state = {s: [r for r in results if r.state is s] for s in ItemState}
    assert 900 == len(by_state[ItemState.COMPLETED])
    invalid = [r for r in by_state[ItemState.FAILED] if isinstance(r.error, InputError)]
    refused = [r for r in by_state[ItemState.FAILED] if isinstance(r.error, JobFailedError)]
    assert 50 == len(invalid)
    assert all("num_images" in str(r.error) and r.request_id is None for r in invalid)
    assert 50 == len(refused)
    assert all(r.request_id and 1 == r.attempts for r in refused)
    assert 950 == emulator.counters.submits  # invalid items were never sent


async def test_outputs_land_on_disk_named_after_inputs(
    client: AsyncClient, png_bytes: bytes, tmp_path: Path
) -> None:
    """Local files go in; real images come out, named <input stem>_<n>.<ext>."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("cat", "dog"):
        (inputs / f"{name}.png").write_bytes(png_bytes)
    out = tmp_path / "out"
    items = [
        EditImageInput(prompt="black and white", image_urls=[p], num_images=2, output_format="webp")
        for p in sorted(inputs.iterdir())
    ]

    results = await run_all(client, items, download_to=out)

    assert ["cat_0.webp", "cat_1.webp", "dog_0.webp", "dog_1.webp"] == sorted(
        p.name for p in out.iterdir()
    )
    for result in results:
        for file in result.files:
            assert file.size == file.path.stat().st_size
            with Image.open(file.path) as image:
                assert "WEBP" == image.format


async def test_truncated_downloads_are_retried_and_never_left_partial(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Truncated downloads are retried; only complete files remain, no temp files."""
    emulator.schedule_fault("download", "truncated_download", times=2)

    results = await run_all(client, [item(png_data_uri, n) for n in range(3)], download_to=tmp_path)

    assert all(r.ok for r in results)
    assert 2 == client.statistics().retries.download
    assert 3 == len(list(tmp_path.glob("*.png")))
    assert [] == [p for p in tmp_path.iterdir() if p.name.startswith(".")]


async def test_download_that_keeps_failing_fails_only_its_item(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A download failing past its retries fails that item, keeps its request id, and no file."""
    emulator.schedule_fault("download", "truncated_download", times=10)
    items = [("doomed", item(png_data_uri, 1))]

    (result,) = await run_all(client, items, download_to=tmp_path)

    assert ItemState.FAILED == result.state
    assert isinstance(result.error, DownloadError)
    assert result.request_id in emulator.jobs
    assert [] == list(tmp_path.iterdir())


@pytest.mark.parametrize("key", ["../../escape", "/abs/path", "a\0b", "..", "dir/../x"])
async def test_hostile_keys_stay_inside_the_folder(
    client: AsyncClient, png_data_uri: str, tmp_path: Path, key: str
) -> None:
    """Item keys that look like paths still produce files inside the download folder."""
    out = tmp_path / "out"

    (result,) = await run_all(client, [(key, item(png_data_uri))], download_to=out)

    assert result.ok
    assert all(f.path.parent == out for f in result.files)
    assert [out] == [p.parent for p in out.iterdir()]
    assert ["out"] == [p.name for p in tmp_path.iterdir()]


async def test_same_stem_never_overwrites_another_output(
    client: AsyncClient, png_bytes: bytes, tmp_path: Path
) -> None:
    """Two items from the same input file get distinct output names."""
    source = tmp_path / "photo.png"
    source.write_bytes(png_bytes)
    out = tmp_path / "out"
    items = [EditImageInput(prompt=p, image_urls=[source]) for p in ("pixel art", "tint")]

    results = await run_all(client, items, download_to=out)

    paths = [f.path for r in results for f in r.files]
    assert 2 == len(set(paths))
    assert "photo_0.png" in {p.name for p in paths}


async def test_leaving_early_cancels_every_job(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Leaving the batch block cancels every in-flight job on fal and leaves no temp file."""
    emulator.hold_jobs()
    items = [item(png_data_uri, n) for n in range(10)]
    async with client.edit_many(items, concurrency=4, download_to=tmp_path) as batch:
        await emulator.wait_in_flight(4)
        await emulator.wait_until(lambda: emulator.counters.streams_opened >= 4)
    summary = batch.summary()

    assert 4 == emulator.counters.submits
    assert 4 == emulator.counters.cancels
    for job in emulator.jobs.values():
        await emulator.wait_for_state(job.request_id, "COMPLETED")
        assert "client_cancelled" == job.error_type
    # Six items waited for a slot: cut short too, and part of the batch's total.
    assert (4, 4) == (summary.cancelled, summary.cancelled_on_exit)
    assert (10, 10) == (summary.interrupted, summary.total)
    assert [] == list(tmp_path.iterdir())


async def test_rate_limit_burst_lowers_then_restores_concurrency(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """A burst of 429s on submit halves jobs in flight once; successes bring it back."""
    emulator.schedule_fault("submit", "rate_limit", times=3, retry_after=0)
    items = [item(png_data_uri, n) for n in range(40)]

    async with client.edit_many(items, concurrency=8) as batch:
        results = [r async for r in batch]
    summary = batch.summary()

    assert all(r.ok for r in results)
    assert 4 == summary.lowest_concurrency
    assert 8 == summary.concurrency
    assert 3 == client.statistics().retries.rate_limit
    assert 40 == emulator.counters.submits


async def test_infrastructure_failure_retried_once_validation_never(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """A runner failure gets one more job; a model refusal gets none."""
    emulator.schedule_fault("job", "model_failure", error_type="runner_disconnected")
    (flaky,) = await run_all(client, [("flaky", item(png_data_uri, 1))])
    emulator.schedule_fault("job", "model_failure", error_type="validation")
    (refused,) = await run_all(client, [("refused", item(png_data_uri, 2))])
    emulator.schedule_fault("job", "model_failure", error_type="runner_disconnected", times=2)
    (hopeless,) = await run_all(client, [("hopeless", item(png_data_uri, 3))])

    assert (ItemState.COMPLETED, 2) == (flaky.state, flaky.attempts)
    assert (ItemState.FAILED, 1) == (refused.state, refused.attempts)
    assert (ItemState.FAILED, 2) == (hopeless.state, hopeless.attempts)
    assert [2, 1, 2] == list(emulator.counters.submits_by_input.values())


@pytest.mark.parametrize(
    ("error_type", "jobs"),
    [
        pytest.param("runner_disconnected", 2, id="runner-failure-retried"),
        pytest.param("bad_request", 1, id="bad-request-not-retried"),
        pytest.param("runner_server_error", 1, id="runner-500-not-retried"),
        pytest.param("request_timeout", 1, id="over-its-time-not-retried"),
        pytest.param("validation", 1, id="content-policy-not-retried"),
    ],
)
async def test_error_type_decides_a_job_retry_without_the_retryable_header(
    png_data_uri: str, error_type: str, jobs: int
) -> None:
    """Without X-Fal-Retryable, fal's error type decides: only a runner failure gets a new job."""
    async with Emulator(fast_images=True, retryable_header=False) as emu, client_for(emu) as c:
        emu.schedule_fault("job", "model_failure", error_type=error_type)

        (result,) = await run_all(c, [("one", item(png_data_uri))])

    assert (jobs, jobs) == (result.attempts, emu.counters.submits)
    assert (jobs == 2) == result.ok
    assert [] == emu.internal_errors


async def test_progress_events_in_order(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Each item reports submitted, started, completed and downloaded, in that order."""
    events: list[BatchEvent] = []

    await run_all(
        client, [("one", item(png_data_uri))], download_to=tmp_path, on_event=events.append
    )

    kinds = [type(e) for e in events if not type(e).__name__.startswith(("ItemLog", "ItemQ"))]
    assert [ItemSubmitted, ItemStarted, ItemCompleted, ItemDownloaded] == kinds
    assert {"one"} == {e.key for e in events}


async def test_log_lines_are_asked_for_only_when_someone_listens(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """Without ``on_event`` no log line reaches anyone, so none is asked of fal (the status
    events stay small); with it, every stream asks for them and they arrive as events."""
    await run_all(client, [(f"q{n}", item(png_data_uri, n)) for n in range(3)])
    assert (3, 0) == (emulator.counters.streams_opened, emulator.counters.streams_with_logs)

    events: list[BatchEvent] = []
    await run_all(client, [("heard", item(png_data_uri, 9))], on_event=events.append)
    assert (4, 1) == (emulator.counters.streams_opened, emulator.counters.streams_with_logs)
    assert any(type(e).__name__ == "ItemLog" for e in events)


async def test_unreadable_file_fails_only_its_item(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A missing or non-image file is an input error for that item; nothing is sent for it."""
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    items = [
        ("missing", item(png_data_uri) | {"image_urls": [tmp_path / "nope.png"]}),
        ("text", item(png_data_uri) | {"image_urls": [text]}),
        ("good", item(png_data_uri)),
    ]
    events: list[BatchEvent] = []

    results = {r.key: r for r in await run_all(client, items, on_event=events.append)}

    assert results["good"].ok
    assert isinstance(results["missing"].error, InputError)
    assert isinstance(results["text"].error, InputError)
    assert 1 == emulator.counters.submits
    assert {"missing", "text"} == {e.key for e in events if isinstance(e, ItemFailed)}


async def test_async_iterable_is_pulled_only_as_capacity_frees(
    emulator: Emulator, png_data_uri: str
) -> None:
    """A long async source is read lazily: pulled items stay within the pipeline size."""
    pulled = 0

    async def source() -> AsyncIterator[dict[str, Any]]:
        nonlocal pulled
        for n in range(10_000):
            pulled += 1
            yield item(png_data_uri, n)

    emulator.hold_jobs()
    async with client_for(emulator) as client, client.edit_many(source(), concurrency=2):
        await emulator.wait_in_flight(2)
        await anyio.wait_all_tasks_blocked()
        limits = client.config.limits
        assert pulled <= 2 + limits.uploads + limits.downloads + 1


async def test_budget_is_never_crossed(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """Items whose estimate would cross the budget are not submitted and say why."""
    cheap = {"quality": "low", "image_size": "1024x1024", "input_fidelity": "low"}
    items = [item(png_data_uri, n, **cheap) for n in range(5)]  # $0.02 each, estimated

    async with client.edit_many(items, budget=0.05, concurrency=1) as batch:
        results = [r async for r in batch]

    assert 2 == emulator.counters.submits
    assert 3 == sum(r.state is ItemState.NOT_SUBMITTED for r in results)
    assert batch.summary().estimated_cost <= 0.05


async def test_job_retry_needs_the_budget_again(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """A runner failure is not retried when the budget covers only the job already paid for."""
    one = item(png_data_uri, 1, quality="low", image_size="1024x1024", input_fidelity="low")
    budget = estimate_batch([one]).total_usd  # exactly one job
    emulator.schedule_fault("job", "model_failure", error_type="runner_disconnected")

    (result,) = await run_all(client, [("flaky", one)], budget=budget, job_retries=1)

    assert ItemState.FAILED == result.state
    assert isinstance(result.error, BudgetExceededError)
    assert (1, 1) == (result.attempts, emulator.counters.submits)
    (job,) = emulator.jobs.values()
    assert (result.request_id, "runner_disconnected") == (job.request_id, job.error_type)


async def test_summary_counts_everything(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The summary adds up items, bytes, estimated cost and retried requests by kind."""
    emulator.schedule_fault("status", "server_error")
    emulator.schedule_fault("stream", "refuse_stream")
    emulator.schedule_fault("cancel", "server_error")
    assert CancelOutcome.NOT_FOUND == await client.cancel("before-the-batch")  # 1 retry, not ours
    items = [item(png_data_uri, n) for n in range(3)] + [item(png_data_uri, 9, num_images=9)]

    async with client.edit_many(items, download_to=tmp_path) as batch:
        results = [r async for r in batch]
    summary = batch.summary()

    assert (4, 3, 1) == (summary.total, summary.completed, summary.failed)
    assert sum(f.size for r in results for f in r.files) == summary.bytes_downloaded > 0
    assert sum(r.cost for r in results) == summary.estimated_cost > 0
    assert {"server_error": 1} == dict(summary.request_retries)
    assert "3 completed, 1 failed" in str(summary)


async def test_cost_counts_only_jobs_fal_accepted(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """An item whose submit never got through costs nothing; a retried job costs twice."""
    emulator.schedule_fault("submit", "server_error", status=500)
    (refused,) = await run_all(client, [("refused", item(png_data_uri, 1))])
    emulator.schedule_fault("job", "model_failure", error_type="runner_disconnected")
    (retried,) = await run_all(client, [("retried", item(png_data_uri, 2))])

    # fal's own 500 may hide a queued job: unknown, but nothing fal accepted is counted
    assert (ItemState.UNKNOWN, 0) == (refused.state, refused.cost)
    assert retried.ok and 2 == retried.attempts
    assert retried.cost == 2 * (await _one_job_cost(client, png_data_uri))


async def _one_job_cost(client: AsyncClient, uri: str) -> Any:
    (result,) = await run_all(client, [("plain", item(uri, 3))])
    return result.cost


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        pytest.param({"downloads": 10}, "downloads", id="downloads-given"),
        pytest.param({"concurrency": 10}, "concurrency", id="concurrency-given"),
        pytest.param({"concurrency": 4, "downloads": 14}, "downloads", id="both-downloads-larger"),
        pytest.param({"concurrency": 14, "downloads": 4}, "concurrency", id="both-jobs-larger"),
    ],
)
def test_a_batch_over_the_connection_pool_names_the_setting_given(
    settings: dict[str, int], field: str
) -> None:
    """Over Limits.max_connections, the error names the setting the caller gave (of two, the
    larger), even when the other one's default takes more sockets."""
    client = AsyncClient(api_key="k", limits=Limits(max_connections=20))
    with pytest.raises(InputError) as caught:
        client.edit_many([], **settings)  # type: ignore[arg-type]

    assert field == caught.value.field


async def test_concurrency_beyond_the_connection_pool_is_refused(
    emulator: Emulator, png_data_uri: str
) -> None:
    """A batch whose jobs and downloads cannot all have a socket is refused before sending."""
    async with client_for(emulator, limits=Limits(max_connections=20)) as client:
        with pytest.raises(InputError, match="max_connections=20"):
            async with client.edit_many([item(png_data_uri)], concurrency=16):
                pass
    assert 0 == emulator.counters.requests_total


async def test_results_already_waiting_reach_the_consumer_back_to_back(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """Four items finish before the consumer looks: it gets all four with no other task run
    between them, so the last of a burst of n is not n trips through the event loop late."""
    items = [item(png_data_uri, n) for n in range(4)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    seen: list[int] = []
    async with client.edit_many(items, concurrency=4) as batch:
        await emulator.wait_until(lambda: emulator.counters.result_fetches >= 4)
        await anyio.wait_all_tasks_blocked()  # the four results wait in the batch's buffer
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.lowlevel.checkpoint()  # the ticker has ticked
            seen += [ticks async for result in batch if result.ok]
            tg.cancel_scope.cancel()
    assert 4 == len(seen)
    assert 1 == len(set(seen)), seen


@pytest.mark.parametrize("leave", ["break", "cancel"])
async def test_results_that_ended_but_were_never_yielded_are_in_undelivered(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, leave: str
) -> None:
    """Six items finish while the consumer looks away (two in the buffer, the rest parked
    behind it); it takes one and stops. The other five are finished all the same: they
    were lost to the caller (the CLI then printed "not started" for downloaded, journaled
    items, atk13); now each is in ``undelivered``, once, and the first is not."""
    items = [item(png_data_uri, n) for n in range(6)]
    taken: list[str] = []
    with anyio.CancelScope() as scope:
        async with client.edit_many(
            items, concurrency=2, download_to=tmp_path / "out", journal=tmp_path / "j"
        ) as batch:
            await emulator.wait_until(lambda: emulator.counters.downloads >= 6)
            await anyio.wait_all_tasks_blocked()  # every result waits to be yielded
            async for result in batch:
                taken.append(result.key)
                if leave == "cancel":
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
                break
    assert 1 == len(taken)
    left = batch.undelivered
    assert 5 == len(left) and {r.key for r in left}.isdisjoint(taken)
    assert {ItemState.COMPLETED} == {r.state for r in left}
    assert 6 == len({r.key for r in left} | set(taken))
    assert 6 == emulator.counters.submits
