"""Chaos: a batch through an emulator that fails often, in every way it can, at once.

The suite-sized run (``test_chaos_batch``) sends 5xx, 429s, dropped status streams, truncated
downloads, connection resets and model refusals at the issue's rates, and checks that nothing
is lost, paid twice or left half-written. ``benchmarks/chaos.py`` is the 2,000-job version.

Two faults are kept away from submits in that run, because after them a retry could pay
twice: fal's own 5xx (it carries a request id, so fal may have queued the job) and a reset
after the request was sent. Submits get the gateway's 5xx instead (no request id: fal never
saw the POST), and the ambiguous cases are covered one by one below.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from fal_edit_async import (
    AsyncClient,
    DownloadError,
    ItemResult,
    ItemState,
    JobFailedError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from fal_edit_async.emulator import Emulator, Faults

from .conftest import client_for

#: Items in the suite's chaos run: enough for every fault to fire many times, in ~6 s.
CHAOS_ITEMS = 500
#: Enough attempts that 16% of requests failing never exhausts them by chance (0.16**10).
CHAOS_RETRY = RetryPolicy(wait=False, max_attempts=10)
_SAFE_ROUTES = {"status", "stream", "result", "download"}
CHAOS_FAULTS = Faults(
    seed=20240917,
    routes={"submit", *_SAFE_ROUTES},
    routes_by_kind={
        "server_error": _SAFE_ROUTES,  # fal's own 5xx: ambiguous on a submit
        "ingress_error": {"submit"},  # the gateway's 5xx: fal never saw the submit
        "connection_reset": _SAFE_ROUTES,  # ambiguous on a submit once the body was sent
    },
    rate_limit=0.05,
    retry_after=1.0,  # sent as Retry-After; RetryPolicy(wait=False) skips the wait
    server_error=0.10,
    ingress_error=0.10,
    stream_drop=0.05,
    truncated_download=0.02,
    connection_reset=0.01,
    model_failure=0.02,
    model_failure_kind="validation",  # a model refusal: never worth a second job
)
#: A job runs 10 ms, logging twice, so status streams see it running (and can drop).
JOB_TIME: dict[str, Any] = {"processing_time": 0.01, "log_lines": 2}
#: Client counters that each count one failed request (or stream) that was tried again.
CLIENT_RETRY_KINDS = ("rate_limit", "server_error", "transport", "timeout", "download")
#: Emulator faults that each fail one request the client sees (unless aiohttp resends it).
EMULATOR_HTTP_FAULTS = (
    "rate_limit",
    "server_error",
    "ingress_error",
    "connection_reset",
    "truncated_download",
    "stream_drop",
)


def chaos_items(uri: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    """``n`` keyed items with distinct prompts, one or two outputs, three formats."""
    formats = ("png", "webp", "jpeg")
    return [
        (
            f"item-{i:04d}",
            {
                "prompt": f"studio background #{i}",
                "image_urls": [uri],
                "num_images": 1 + i % 2,
                "output_format": formats[i % 3],
            },
        )
        for i in range(n)
    ]


def check_files(result: ItemResult, folder: Path) -> None:
    """Every output of a completed item is on disk, whole, and the image fal described."""
    assert result.output is not None
    assert len(result.output.images) == len(result.files)
    for image, file in zip(result.output.images, result.files, strict=True):
        assert folder == file.path.parent
        assert file.size == file.path.stat().st_size == image.file_size
        with Image.open(file.path) as opened:
            opened.load()  # decodes every byte: a truncated file raises here
            assert (image.width, image.height) == opened.size


def leftovers(folder: Path) -> list[str]:
    """Temp, hidden or partial files in ``folder``."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or ".part" in p.name]


def posts(emu: Emulator) -> list[int]:
    """The status of each POST the emulator answered, in order (0 for a dropped one)."""
    return [status for _, method, _, status in emu.counters.request_log if method == "POST"]


def retry_report(client: AsyncClient, emu: Emulator) -> tuple[dict[str, int], dict[str, int]]:
    """What the client retried, by kind, and what the emulator injected, by kind."""
    stats = client.statistics()
    retries = stats.retries.as_dict()
    seen = {k: retries.get(k, 0) for k in CLIENT_RETRY_KINDS}
    seen |= {"stream_errors": stats.stream_errors, "stream_drops": stats.stream_drops}
    injected = {k: emu.counters.faults_injected[k] for k in EMULATOR_HTTP_FAULTS}
    return seen, injected


async def test_chaos_batch(png_data_uri: str, tmp_path: Path) -> None:
    """Under every fault at once, each item completes with whole files or reports its refusal."""
    out = tmp_path / "out"
    async with (
        Emulator(workers=32, fast_images=True, faults=CHAOS_FAULTS, **JOB_TIME) as emu,
        client_for(emu, retry=CHAOS_RETRY) as client,
    ):
        items = chaos_items(png_data_uri, CHAOS_ITEMS)
        async with client.edit_many(items, concurrency=32, download_to=out) as batch:
            results = [r async for r in batch]
        summary = batch.summary()
        seen, injected = retry_report(client, emu)
        jobs = dict(emu.jobs)
        counters = emu.counters

    by_state = Counter(r.state for r in results)
    refused = [r for r in results if isinstance(r.error, JobFailedError)]
    assert CHAOS_ITEMS == len(results)
    # Model refusals: reported with the model's own words, after exactly one job.
    assert counters.faults_injected["model_failure"] == len(refused) > 0
    for r in refused:
        assert isinstance(r.error, JobFailedError)
        assert (422, 1) == (r.error.status, r.attempts)
        assert "content policy" in str(r.error)
        assert r.request_id is not None and jobs[r.request_id].failed
    # Everything else: completed, every file whole and verified.
    assert {ItemState.COMPLETED: CHAOS_ITEMS - len(refused), ItemState.FAILED: len(refused)} == (
        dict(by_state)
    )
    for r in results:
        if r.ok:
            check_files(r, out)
    # Paid once: every input reached fal exactly once, and nothing else did.
    assert CHAOS_ITEMS == counters.submits == len(counters.submits_by_input)
    assert {1} == set(counters.submits_by_input.values())
    # No partial, temp or orphan file.
    assert [] == leftovers(out)
    assert sorted(f.path.name for r in results for f in r.files) == sorted(
        p.name for p in out.iterdir()
    )
    # Retries are reported by kind, and account for the faults the emulator injected: each
    # one cost exactly one retry, except resets that aiohttp silently re-sent (idempotent GET).
    assert {"rate_limit", "server_error", "download"} <= set(summary.request_retries)
    assert all(injected[k] > 0 for k in EMULATOR_HTTP_FAULTS), repr((injected, seen))
    total_seen, total_injected = sum(seen.values()), sum(injected.values())
    assert total_injected - injected["connection_reset"] <= total_seen <= total_injected
    assert 0 == counters.cdn_auth_requests
    assert summary.lowest_concurrency < 32  # the 429s on submit slowed the batch down


async def test_reset_after_submit_fails_only_that_item(png_data_uri: str, tmp_path: Path) -> None:
    """A reset after fal queued a submit fails that item, and the POST is never re-sent."""
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("submit", "connection_reset", after_enqueue=True)
        items = chaos_items(png_data_uri, 4)
        async with client.edit_many(items, concurrency=1, download_to=tmp_path) as batch:
            results = [r async for r in batch]
        lost = [r for r in results if not r.ok]

        assert 1 == len(lost)
        assert isinstance(lost[0].error, TransportError)
        assert lost[0].request_id is None  # the answer with it never arrived
        # fal has the job (it will run and be paid for); the client never sent it twice.
        assert 4 == emu.counters.submits == emu.counters.submit_attempts
        assert {1} == set(emu.counters.submits_by_input.values())
        orphan = set(emu.jobs) - {r.request_id for r in results}
        assert 1 == len(orphan)
        assert sum(len(r.files) for r in results) == len(list(tmp_path.iterdir())) > 0


async def test_fal_5xx_on_submit_is_not_retried(png_data_uri: str) -> None:
    """fal's own 500 on a submit (with a request id) may have queued it: reported, not re-sent."""
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("submit", "server_error")
        items = chaos_items(png_data_uri, 2)
        async with client.edit_many(items, concurrency=1) as batch:
            results = [r async for r in batch]

        failed = [r for r in results if not r.ok]
        assert 1 == len(failed)
        assert isinstance(failed[0].error, ServerError)
        assert [500, 200] == posts(emu)  # one POST per item: the 500 was not re-sent
        assert 1 == emu.counters.submits


async def test_reset_before_enqueue_is_retried_when_opted_in(png_data_uri: str) -> None:
    """With retry_ambiguous_submit, a reset submit is sent again; here fal had not queued it."""
    retry = RetryPolicy(wait=False, max_attempts=4, retry_ambiguous_submit=True)
    async with Emulator(fast_images=True) as emu, client_for(emu, retry=retry) as client:
        emu.schedule_fault("submit", "connection_reset", after_enqueue=False)
        async with client.edit_many(chaos_items(png_data_uri, 2)) as batch:
            results = [r async for r in batch]

        assert all(r.ok for r in results)
        assert [0, 200, 200] == posts(emu)  # 0: the dropped connection
        assert 2 == emu.counters.submits
        assert 1 == client.statistics().retries.transport


async def test_journal_rerun_after_chaos_pays_nothing(png_data_uri: str, tmp_path: Path) -> None:
    """Run a chaotic batch with a journal, then run it again: no new submit, no new download."""
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    async with (
        Emulator(workers=16, fast_images=True, faults=CHAOS_FAULTS, **JOB_TIME) as emu,
        client_for(emu, retry=CHAOS_RETRY) as client,
    ):
        items = chaos_items(png_data_uri, 60)
        async with client.edit_many(items, download_to=out, journal=journal) as batch:
            first = {r.key: r for r in [r async for r in batch]}
        submits, downloads = emu.counters.submits, emu.counters.downloads
        async with client.edit_many(items, download_to=out, journal=journal) as batch:
            second = {r.key: r for r in [r async for r in batch]}

        assert (submits, downloads) == (emu.counters.submits, emu.counters.downloads)
        assert {k: r.state for k, r in first.items()} == {k: r.state for k, r in second.items()}
        assert all(r.resumed for r in second.values())
        assert {1} == set(emu.counters.submits_by_input.values())


async def test_journal_rerun_downloads_what_failed_to_download(
    png_data_uri: str, tmp_path: Path
) -> None:
    """A download that failed past its retries is fetched on a rerun, without a new submit."""
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        items = chaos_items(png_data_uri, 1)
        emu.schedule_fault("download", "truncated_download", times=4)  # FAST_RETRY: 4 tries
        async with client.edit_many(items, download_to=out, journal=journal) as batch:
            (first,) = [r async for r in batch]
        assert isinstance(first.error, DownloadError)
        async with client.edit_many(items, download_to=out, journal=journal) as batch:
            (second,) = [r async for r in batch]

        assert 1 == emu.counters.submits
        assert second.ok, second.error
        check_files(second, out)
