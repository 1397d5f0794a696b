"""Attacks (round atk4) on the batch limiter, the transport's first wave, the resume rule and
the class-based streams. Five were breaks, all fixed: a clash deletes only the files it
published; closing the client under a batch cancels the jobs it follows (and those whose
submit answer is on its way) and leaves unsent items submittable; a download cut by close
fails typed; the certificates load outside the shielded POST, so a deadline ends a hung
load. Unmarked tests are claims that held under an attack not covered elsewhere."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from pathlib import Path

import anyio
import pytest

from fal_edit_async import (
    AsyncClient,
    DownloadError,
    EditImageInput,
    EditItem,
    InternalError,
    ItemResult,
    JobTimeoutError,
    Limits,
    ProtocolError,
    RetryPolicy,
)
from fal_edit_async.emulator import Emulator

from ._cli_runs import cli_env, edit_command
from .conftest import client_for, make_png
from .test_cli_support import json_lines


def item(path: Path, n: int = 1) -> EditItem:
    return EditItem(input=EditImageInput(prompt="p", image_urls=[path], num_images=n), name="photo")


def input_png(tmp_path: Path, color: tuple[int, int, int] = (1, 2, 3)) -> Path:
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(make_png(color=color))
    return path


# -- 3. the resume rule / clash clean-up ---------------------------------------------------


async def test_a_clash_never_deletes_a_file_another_writer_put_at_a_published_name(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A two-image item, downloads one at a time. Image 0 is published as photo_0.png; while
    image 1's body is held, another program saves its own file at photo_0.png (os.replace,
    as editors do) and another run takes photo_1.png. Image 1 clashes, the item gives up its
    names and "deletes what this attempt wrote": the other program's photo_0.png."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    theirs = b"the other program's file, not an output of this batch"
    emulator.hold_downloads()
    async with (
        client_for(emulator) as client,
        client.edit_many([item(src, 2)], download_to=out, downloads=1) as batch,
        anyio.create_task_group() as tg,
    ):
        results: list[ItemResult] = []

        async def consume() -> None:
            results.extend([r async for r in batch])

        tg.start_soon(consume)
        await emulator.wait_downloads_held(1)  # image 0
        emulator.release_downloads(1)
        await emulator.wait_until(lambda: emulator.counters.downloads >= 1)
        await emulator.wait_downloads_held(1)  # image 1: image 0 is published (slot freed)
        published = out / "photo_0.png"
        assert published.exists()
        side = out / ".side"
        side.write_bytes(theirs)
        os.replace(side, published)  # another writer's file now has that name
        (out / "photo_1.png").write_bytes(b"another run's file")
        emulator.release_downloads()
    (result,) = results
    assert result.ok
    assert published.read_bytes() == theirs, "the other writer's file was deleted"


# -- 1. the CLI killed at moments picked by what the emulator saw ---------------------------


def _inputs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"p{i}.png"
        path.write_bytes(make_png((24, 16), (i * 7 % 256, i * 13 % 256, 40)))
        paths.append(path)
    return paths


KILLS = [
    pytest.param(signal.SIGKILL, "submits", 5, id="kill9-after-5-submits"),
    pytest.param(signal.SIGKILL, "downloads", 3, id="kill9-after-3-downloads"),
    pytest.param(signal.SIGTERM, "submit_attempts", 7, id="term-mid-submits"),
    pytest.param(signal.SIGINT, "downloads", 6, id="int-after-6-downloads"),
    pytest.param(signal.SIGKILL, "completed", 9, id="kill9-after-9-completed"),
]


@pytest.mark.parametrize(("sig", "counter", "at"), KILLS)
async def test_a_killed_cli_batch_resumes_paying_once_and_losing_nothing(
    emulator: Emulator, tmp_path: Path, sig: signal.Signals, counter: str, at: int
) -> None:
    """fal-edit with a journal, 16 inputs, concurrency 4, a 429 storm and dropped status
    streams: stopped by ``sig`` once the emulator
    counted ``at`` of ``counter``; rerun to the end, then once more. No input is billed
    twice, no more than 4 jobs ran at once, no temp file is left, the third run sends and
    downloads nothing, and every input has its output, except (after kill -9 only) the
    documented gap: a ``submitting`` row whose POST never reached fal stays ``unknown``
    until reconciling can prove no job exists (ReconcilePolicy's bound, minutes away)."""
    n = 16
    _inputs(tmp_path / "in", n)
    emulator.schedule_fault("submit", "rate_limit", times=6, retry_after=0)  # a 429 storm
    emulator.schedule_fault("stream", "stream_drop", times=4)
    env = cli_env(emulator)
    command = edit_command(tmp_path, "--concurrency", "4")
    with anyio.fail_after(120):  # a hang backstop, not a measurement
        process = await anyio.open_process(command, env=env)
        async with process:
            await emulator.wait_until(lambda: getattr(emulator.counters, counter) >= at)
            process.send_signal(sig)
            await process.wait()
        second = await anyio.run_process(command, env=env, check=False)
        submits, downloads = emulator.counters.submits, emulator.counters.downloads
        third = await anyio.run_process(command, env=env, check=False)
    counters = emulator.counters
    assert max(counters.billed_by_input.values()) <= 1
    assert counters.peak_in_flight <= 4
    assert (submits, downloads) == (counters.submits, counters.downloads)
    records = json_lines(third.stdout.decode())
    assert n == len(records)
    left = [r["input"] for r in records if r["status"] != "completed"]
    assert {"unknown"} >= {r["status"] for r in records if r["input"] in left}
    if sig is not signal.SIGKILL:  # a graceful stop answers every POST it sent
        assert [] == left
    # Every job fal queued was adopted: only inputs fal never saw are left unknown.
    assert n == len(counters.submits_by_input) + len(left)
    assert (1 if left else 0) == second.returncode == third.returncode
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert not [name for name in names if name.startswith(".")], names
    for i in range(n):
        if f"p{i}" not in left:
            assert any(name.startswith((f"p{i}_", f"p{i}-")) for name in names), (i, names)


# -- 1. the limiter: a batch cut at any moment leaves nothing held for the next -------------

CUTS = [
    pytest.param("submit_attempts", 1, id="first-submit"),
    pytest.param("submits", 5, id="mid-submits"),
    pytest.param("streams_opened", 4, id="streams-open"),
    pytest.param("completed", 3, id="mid-completions"),
    pytest.param("downloads", 4, id="mid-downloads"),
    pytest.param("downloads", 11, id="late-downloads"),
]


@pytest.mark.parametrize(("counter", "at"), CUTS)
async def test_a_batch_cut_at_any_moment_leaves_the_client_whole(
    emulator: Emulator, tmp_path: Path, counter: str, at: int, png_data_uri: str
) -> None:
    """A batch of 12 (concurrency 3, downloads 2, a 429 storm on submits, status streams
    dropped) is cancelled from outside when the emulator has counted ``at`` of ``counter``;
    a second batch on the same client then runs all 12 to the end, within the same bounds,
    and no job is billed twice."""
    emulator.schedule_fault("submit", "rate_limit", times=4, retry_after=0)
    emulator.schedule_fault("stream", "stream_drop", times=3)

    def items(tag: str) -> list[EditItem]:
        return [
            EditItem(
                input=EditImageInput(prompt=f"{tag}{n}", image_urls=[png_data_uri]), name=f"x{n}"
            )
            for n in range(12)
        ]

    async with client_for(emulator) as client:
        with anyio.fail_after(60):  # a hang backstop, not a measurement
            async with anyio.create_task_group() as tg:

                async def first() -> None:
                    async with client.edit_many(
                        items("a"), concurrency=3, downloads=2, download_to=tmp_path / "a"
                    ) as batch:
                        async for _ in batch:
                            pass

                tg.start_soon(first)
                await emulator.wait_until(lambda: getattr(emulator.counters, counter) >= at)
                tg.cancel_scope.cancel()
            async with client.edit_many(
                items("b"), concurrency=3, downloads=2, download_to=tmp_path / "b"
            ) as batch:
                results = [r async for r in batch]
    assert 12 == sum(r.ok for r in results)
    assert emulator.counters.peak_in_flight <= 3
    assert emulator.counters.peak_downloads <= 2
    assert max(emulator.counters.billed_by_input.values()) <= 1
    assert 0 == emulator.counters.in_flight + emulator.counters.downloads_in_flight


# -- 4. streams interrupted at any point release their connection ---------------------------


def _streaming(emulator: Emulator) -> int:
    return sum(job.open_streams for job in emulator.jobs.values())


def _acquired(client: AsyncClient) -> int:
    session = client._core.transport._session  # type: ignore[attr-defined]
    return 0 if session is None else len(session.connector._acquired)


async def test_interrupted_streams_and_downloads_never_hold_a_connection(
    emulator: Emulator, tmp_path: Path, png_data_uri: str
) -> None:
    """Two sockets in the pool, and thirty rounds of: a download cut short by the server
    and one answered 500 (both retried), a download cancelled while its body is held, a
    status stream dropped, refused or garbled, and a job followed over its stream cancelled
    mid-stream. Any connection one of them kept would starve the next round (a hang, caught
    by the backstop); none is held at the end."""
    async with client_for(emulator, limits=Limits(max_connections=2)) as client:
        output = await client.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
        with anyio.fail_after(60):  # a hang backstop, not a measurement
            for n in range(30):
                emulator.schedule_fault("download", "truncated_download", times=1)
                await client.download(output, tmp_path / "cut", stem=f"c{n}")
                emulator.hold_downloads()
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(
                            functools.partial(client.download, stem=f"h{n}"), output, tmp_path / "h"
                        )
                        await emulator.wait_downloads_held(1)
                        scope.cancel()
                emulator.release_downloads()
                emulator.schedule_fault("download", "server_error", times=1, status=500)
                await client.download(output, tmp_path / "err", stem=f"e{n}")
                emulator.schedule_fault("stream", "stream_drop", times=1)
                emulator.schedule_fault("stream", ("refuse_stream", "invalid_json")[n % 2])
                with contextlib.suppress(ProtocolError):  # a garbled status: typed, and final
                    await client.edit(EditImageInput(prompt=f"d{n}", image_urls=[png_data_uri]))
                emulator.hold_jobs()
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        edit = EditImageInput(prompt=f"s{n}", image_urls=[png_data_uri])
                        tg.start_soon(client.edit, edit)
                        await emulator.wait_until(lambda: _streaming(emulator) >= 1)
                        scope.cancel()
                emulator.release_jobs()
                await emulator.wait_until(lambda: _streaming(emulator) == 0)
        assert 0 == _acquired(client)
    assert max(emulator.counters.billed_by_input.values()) <= 1


async def test_a_download_under_a_closing_client_fails_typed_and_at_once(
    emulator: Emulator, tmp_path: Path, png_data_uri: str
) -> None:
    """The client is closed while a download's body is held: the download ends with a
    DownloadError (a TransportError inside), no temp file stays, nothing hangs."""
    client = client_for(emulator)
    async with client:
        output = await client.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
        emulator.hold_downloads()
        errors: list[BaseException] = []

        async def download() -> None:
            try:
                await client.download(output, tmp_path, stem="x")
            except BaseException as exc:  # the group, to be looked into below
                errors.append(exc)

        with anyio.fail_after(20):  # a hang backstop, not a measurement
            async with anyio.create_task_group() as tg:
                tg.start_soon(download)
                await emulator.wait_downloads_held(1)
                await client.aclose()
    emulator.release_downloads()
    (error,) = errors
    assert isinstance(error, ExceptionGroup), repr(error)
    assert all(isinstance(e, DownloadError) for e in error.exceptions), repr(error.exceptions)
    assert [] == list(tmp_path.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "term"])
async def test_a_budget_holds_across_a_killed_run_and_its_rerun(
    emulator: Emulator, tmp_path: Path, sig: signal.Signals
) -> None:
    """--budget 2.00 (7 jobs at ~$0.27) over 16 inputs: the first run is stopped after 4
    submits, the rerun spends what is left. fal never queued more than the budget covers,
    counting what the killed run spent (and the submits it may have sent)."""
    _inputs(tmp_path / "in", 16)
    env = cli_env(emulator)
    command = edit_command(tmp_path, "--concurrency", "3", "--budget", "2.00")
    with anyio.fail_after(120):  # a hang backstop, not a measurement
        process = await anyio.open_process(command, env=env)
        async with process:
            await emulator.wait_until(lambda: emulator.counters.submits >= 4)
            process.send_signal(sig)
            await process.wait()
        await anyio.run_process(command, env=env, check=False)
        await anyio.run_process(command, env=env, check=False)
    assert emulator.counters.submits <= 7
    assert max(emulator.counters.billed_by_input.values()) <= 1


async def test_names_alike_in_case_and_normalisation_keep_one_owner_across_reruns(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Three inputs named Café (NFC), Café (NFD) and CAFÉ, each its own picture, journaled.
    Their outputs never share a name as macOS would compare it; a rerun downloads nothing;
    with the outputs deleted, a rerun writes each under the name its journal row claimed,
    and five more reruns change nothing (no -2, -3... growing)."""
    import unicodedata

    from fal_edit_async._files import fold_name

    folder = tmp_path / "in"
    folder.mkdir()
    stems = [
        unicodedata.normalize("NFC", "Café"),
        unicodedata.normalize("NFD", "Café"),
        "CAFÉ",
    ]
    items = []
    for i, stem in enumerate(stems):
        path = folder / f"{stem}.png"
        path.write_bytes(make_png(color=(10 * i, 99, 7)))
        items.append(EditItem(input=EditImageInput(prompt="p", image_urls=[path]), name=stem))
    out, journal = tmp_path / "out", tmp_path / "j"

    async def run() -> list[ItemResult]:
        async with (
            client_for(emulator) as client,
            client.edit_many(items, download_to=out, journal=journal) as batch,
        ):
            return [r async for r in batch]

    first = await run()
    names = {r.key: sorted(f.path.name for f in r.files) for r in first}
    assert all(r.ok for r in first)
    folded = [fold_name(n) for files in names.values() for n in files]
    assert len(folded) == len(set(folded)) == 3
    downloads = emulator.counters.downloads
    await run()
    assert downloads == emulator.counters.downloads
    for path in out.iterdir():
        path.unlink()
    for _ in range(6):
        again = await run()
        assert names == {r.key: sorted(f.path.name for f in r.files) for r in again}
    assert sorted(n for files in names.values() for n in files) == sorted(
        p.name for p in out.iterdir()
    )
    assert 3 == emulator.counters.submits


@pytest.mark.parametrize("journal", [False, True], ids=["no-journal", "sqlite"])
async def test_max_in_flight_caps_concurrency_under_a_429_storm(
    emulator: Emulator, tmp_path: Path, png_data_uri: str, journal: bool
) -> None:
    """max_in_flight=2 under concurrency=8: never more than two jobs on fal, also while a
    429 storm cuts the level and successes raise it back."""
    emulator.schedule_fault("submit", "rate_limit", times=5, retry_after=0)
    emulator.hold_jobs()
    items = [
        EditItem(input=EditImageInput(prompt=f"m{n}", image_urls=[png_data_uri]), name=f"m{n}")
        for n in range(10)
    ]
    options: dict[str, object] = {"journal": tmp_path / "j"} if journal else {}
    async with (
        # Five 429s between two submitters may all land on one: a budget above five keeps
        # this about the cap, not about an item whose retries run out.
        client_for(emulator, retry=RetryPolicy(wait=False, max_attempts=8)) as client,
        client.edit_many(items, concurrency=8, max_in_flight=2, **options) as batch,  # type: ignore[arg-type]
    ):
        await emulator.wait_in_flight(2)
        await anyio.wait_all_tasks_blocked()
        assert 2 == emulator.counters.submits
        emulator.release_jobs()
        results = [r async for r in batch]
    assert 10 == sum(r.ok for r in results)
    assert 2 == emulator.counters.peak_in_flight


# -- 2. the transport's first wave -----------------------------------------------------------


def _feed_empty(fifo: Path) -> None:
    """In a daemon thread: open ``fifo`` for writing and close it, a few times, so each
    reader blocked opening it goes on (reading an empty file)."""

    def writer() -> None:
        for _ in range(8):
            os.close(os.open(fifo, os.O_WRONLY))  # waits for a reader

    threading.Thread(target=writer, daemon=True).start()


async def test_a_deadline_fires_while_the_certificates_will_not_load(
    emulator: Emulator, tmp_path: Path, png_data_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE names a FIFO nobody writes (as a hung NFS mount would block): OpenSSL's
    open blocks. edit(timeout=0.3) must still end with JobTimeoutError, not hang."""
    fifo = tmp_path / "certs.pem"
    os.mkfifo(fifo)
    monkeypatch.setenv("SSL_CERT_FILE", str(fifo))
    ended = anyio.Event()
    raised: list[BaseException] = []
    async with client_for(emulator) as client:
        try:
            async with anyio.create_task_group() as tg:

                async def edit() -> None:
                    try:
                        edit = EditImageInput(prompt="p", image_urls=[png_data_uri])
                        await client.edit(edit, timeout=0.3)
                    except Exception as exc:  # looked into below
                        raised.append(exc)
                    ended.set()

                tg.start_soon(edit)
                with anyio.move_on_after(5):  # a hang backstop, not a measurement
                    await ended.wait()
                hung = not ended.is_set()
                _feed_empty(fifo)  # the loading thread goes on, and the edit with it
        finally:
            _feed_empty(fifo)
    assert not hung, "edit(timeout=0.3) was still waiting 5 s later"
    assert [JobTimeoutError] == [type(e) for e in raised]


# -- 1/2. the client closed under a running batch ------------------------------------------


async def _close_under_batch(
    emulator: Emulator, png_data_uri: str, journal: Path | None, *, streaming: bool = False
) -> tuple[list[EditItem], list[ItemResult]]:
    """A batch of 8 (concurrency 4) with its jobs held on fal; once 4 are in flight another
    task closes the client. Returns the items and what the batch yielded."""
    items = [
        EditItem(input=EditImageInput(prompt=f"c{n}", image_urls=[png_data_uri]), name=f"c{n}")
        for n in range(8)
    ]
    emulator.hold_jobs()
    client = client_for(emulator)
    results: list[ItemResult] = []
    async with client:
        with anyio.fail_after(30):  # a hang backstop, not a measurement
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    async with client.edit_many(items, concurrency=4, journal=journal) as batch:
                        results.extend([r async for r in batch])

                tg.start_soon(run)
                await emulator.wait_in_flight(4)
                if streaming:  # the batch follows all four: their answers are all read
                    await emulator.wait_until(lambda: _streaming(emulator) == 4)
                await client.aclose()
    return items, results


async def test_closing_the_client_while_a_batch_follows_its_jobs_cancels_them_on_fal(
    emulator: Emulator, png_data_uri: str
) -> None:
    """The client closed while the batch follows its 4 jobs: each is cancelled on fal first,
    none billed, and no item ends with an internal error."""
    _, results = await _close_under_batch(emulator, png_data_uri, None, streaming=True)
    emulator.release_jobs()
    await emulator.wait_until(lambda: emulator.counters.in_flight == 0)
    assert 4 == emulator.counters.cancels
    assert 0 == emulator.counters.billed
    assert [] == [r for r in results if isinstance(r.error, InternalError)]


async def test_closing_the_client_under_a_batch_cancels_its_jobs_on_fal(
    emulator: Emulator, png_data_uri: str
) -> None:
    """guarantees.md: the client closed while a task waits on a job does cancel that job on
    fal first (and leaving a batch early asks fal to cancel each job in flight). Closed
    under a batch: every job fal queued is cancelled, none billed, no item 'failed'."""
    _, results = await _close_under_batch(emulator, png_data_uri, None)
    emulator.release_jobs()
    await emulator.wait_until(lambda: emulator.counters.in_flight == 0)
    assert 4 == emulator.counters.cancels
    assert 0 == emulator.counters.billed
    assert [] == [r for r in results if isinstance(r.error, InternalError)]


async def test_items_never_sent_when_the_client_closed_are_submitted_by_the_rerun(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """With a journal: 4 jobs in flight, 4 items waiting, the client closed. Fal saw 4
    submits, and the close cancelled those 4 (confirmed: unbilled). The rerun submits all 8:
    the 4 cancelled ones again, as fal confirmed them cancelled, and the 4 that were never
    sent (their POST never left: nothing can have been queued). All 8 complete, each paid
    once."""
    journal = tmp_path / "j"
    items, _ = await _close_under_batch(emulator, png_data_uri, journal)
    assert 4 == emulator.counters.submit_attempts
    emulator.release_jobs()
    async with (
        client_for(emulator) as client,
        client.edit_many(items, concurrency=4, journal=journal) as batch,
    ):
        results = [r async for r in batch]
    assert [] == [(r.key, r.state.value) for r in results if not r.ok]
    assert (12, 4) == (emulator.counters.submits, emulator.counters.cancels)
    assert 8 == len(emulator.counters.billed_by_input)
    assert max(emulator.counters.billed_by_input.values()) <= 1
