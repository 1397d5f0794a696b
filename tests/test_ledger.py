"""The batch ledger against the ways a review broke "never pays twice" and "nothing lost".

One test (or a few) per case of the review, numbered as it numbered them. The emulator is as
unforgiving as fal here: cancels of running jobs are best effort (``cancel_running``), results
expire (``expire_result``), a submit can fail after queuing (``server_error_after_queue``) and
a result can lag its status (``result_in_progress``). Every test counts what fal would bill
(``billed_by_input``) and what was submitted, never the clock.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    EditItem,
    InternalError,
    ItemInterrupted,
    ItemState,
    Journal,
    JournalError,
    JournalLockedError,
    JournalState,
    MockTransport,
    ProtocolError,
    Request,
    Response,
    UnknownSubmitError,
    open_journal,
)
from fal_edit_async.emulator import Emulator

from ._postgres import execute
from .conftest import client_for
from .test_cli_support import emulator_thread, write_images


def edit(source: Any, prompt: str = "pixel art") -> EditImageInput:
    """An edit of one image (a URI, a path or bytes)."""
    return EditImageInput(prompt=prompt, image_urls=[source])


async def run(client: AsyncClient, items: Any, **options: Any) -> list[Any]:
    """Run a batch to its end; its results in order of arrival."""
    async with client.edit_many(items, **options) as batch:
        return [r async for r in batch]


def most_billed(emu: Emulator) -> int:
    """The most jobs fal billed for any one input (1 is the promise)."""
    return max(emu.counters.billed_by_input.values(), default=0)


async def states(journal: Path | str) -> dict[str, JournalState]:
    """Each journaled key's state (pending rows are no state yet: as if there were none)."""
    async with open_journal(journal, read_only=True) as j:
        return {e.key: e.state for e in await j.entries() if e.state is not JournalState.PENDING}


@pytest.fixture
async def best_effort() -> AsyncIterator[Emulator]:
    """An emulator on which a cancelled *running* job runs on to a billed end, as fal may."""
    async with Emulator(workers=4, fast_images=True, cancel_running="ignore") as emu:
        yield emu


# -- 1: leaving early records what fal answered, not "cancelled" ---------------------------


async def test_1_jobs_finished_before_ctrl_c_are_fetched_not_paid_again(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """Leaving a batch while finished jobs download: the rerun downloads them, pays nothing."""
    journal, out = ledger, tmp_path / "out"
    items = [(f"k{i}", edit(png_data_uri, f"p{i}")) for i in range(4)]
    emulator.hold_downloads()
    async with client.edit_many(items, journal=journal, download_to=out) as batch:
        await emulator.wait_downloads_held(4)
    summary = batch.summary()

    assert (4, 0, 0) == (summary.interrupted, summary.cancelled_on_exit, emulator.counters.cancels)
    emulator.release_downloads()
    again = await run(client, items, journal=journal, download_to=out)

    assert all(r.ok and r.resumed for r in again)
    assert (4, 1) == (emulator.counters.submits, most_billed(emulator))


async def test_1_a_running_job_whose_cancel_fal_only_requested_is_used_when_it_finishes(
    best_effort: Emulator, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """CANCELLATION_REQUESTED is not cancelled: the job ran on and billed, so the rerun uses it."""
    emu, journal = best_effort, ledger
    events: list[Any] = []
    emu.hold_jobs()
    async with client_for(emu) as client:
        async with client.edit_many(
            [("a", edit(png_data_uri))], journal=journal, on_event=events.append
        ):
            await emu.wait_jobs_held(1)
            await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
        assert {JournalState.CANCEL_REQUESTED} == set((await states(journal)).values())
        assert [ItemInterrupted] == [type(e) for e in events if isinstance(e, ItemInterrupted)]
        emu.release_jobs()
        await emu.wait_completed(1)

        (again,) = await run(client, [("a", edit(png_data_uri))], journal=journal)

    assert again.ok and again.resumed
    assert (1, 1) == (emu.counters.submits, most_billed(emu))


async def test_1_a_queued_job_fal_cancelled_is_submitted_again_once(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """A queued job is removed by the cancel; the resume sees it confirmed and submits anew."""
    journal = ledger
    emulator.hold_queue()
    async with client.edit_many([("a", edit(png_data_uri))], journal=journal) as batch:
        await emulator.wait_submitted(1)
        await emulator.wait_until(lambda: emulator.counters.streams_opened >= 1)
    assert 1 == batch.summary().cancelled_on_exit
    emulator.release_queue()

    (again,) = await run(client, [("a", edit(png_data_uri))], journal=journal)

    assert again.ok
    assert (2, 1) == (emulator.counters.submits, most_billed(emulator))


# -- 2: one writer per journal ---------------------------------------------------------------


async def test_2_a_second_writer_is_refused_at_once(tmp_path: Path) -> None:
    """Two processes (here: two opens) on one journal: the second gets JournalLockedError."""
    async with Journal(tmp_path / "j"):
        with pytest.raises(JournalLockedError, match=f"pid {os.getpid()}"):
            await Journal(tmp_path / "j").open()
        async with Journal(tmp_path / "j", read_only=True) as reader:  # watching is fine
            assert [] == await reader.entries()
    async with Journal(tmp_path / "j"):  # released by the first one's close
        pass


async def test_2_overlapping_batches_on_one_journal_pay_once(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """A cron job overlapping itself: the second batch refuses before submitting anything."""
    journal = tmp_path / "j"
    items = [(f"k{i}", edit(png_data_uri, f"p{i}")) for i in range(10)]
    emulator.hold_jobs()
    async with client_for(emulator) as first, client_for(emulator) as second:
        async with first.edit_many(items, journal=journal):
            await emulator.wait_submitted(10)
            with pytest.raises(JournalLockedError):
                await run(second, items, journal=journal)
            assert 10 == emulator.counters.submits
            emulator.release_jobs()


def test_2_the_cli_says_so_and_exits_2(tmp_path: Path) -> None:
    """`fal-edit batch --journal J` while another run holds J: exit 2 and a clear line."""
    import subprocess

    holder = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); open(sys.argv[1] + '.lock', 'w').write('pid 4242'); "
        "print('held', flush=True); sys.stdin.read()"
    )
    journal = tmp_path / "j"
    write_images(tmp_path / "in", "a.png")
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(journal)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as lock:
        assert lock.stdout is not None and "held" in lock.stdout.readline()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fal_edit_async",
                "edit",
                "p",
                str(tmp_path / "in"),
                "--journal",
                str(journal),
                "--out",
                str(tmp_path / "out"),
            ],
            env={**env, "FAL_KEY": "k", "FAL_QUEUE_URL": "http://127.0.0.1:9"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lock.communicate("")
    assert 2 == done.returncode, done.stderr
    assert "journal in use by another run (pid 4242)" in done.stderr


# -- 3 and 4: keys from content, never position ------------------------------------------------


def test_3_deleting_a_manifest_line_pays_nothing_again(
    tmp_path: Path, ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unkeyed lines named image, image-2...: dropping the first renames the rest, pays none."""
    from fal_edit_async._cli import main

    write_images(tmp_path, "image.png")
    lines = [f'{{"prompt": "p{i}", "inputs": ["image.png"]}}' for i in range(4)]
    manifest, journal = tmp_path / "m.jsonl", ledger
    argv = ["batch", str(manifest), "--journal", str(journal), "--out", str(tmp_path / "out")]
    with emulator_thread(monkeypatch) as (_, emu):
        manifest.write_text("\n".join(lines))
        assert 0 == main(argv)
        manifest.write_text("\n".join(lines[1:]))

        assert 0 == main(argv)

        assert (4, 1) == (emu.counters.submits, most_billed(emu))


async def test_4_identical_inputs_are_distinct_items(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """Five copies of one edit are five items and five rows; the rerun recovers all five."""
    journal = ledger
    items = [edit(png_data_uri)] * 5
    first = await run(client, items, journal=journal, download_to=tmp_path / "out")
    again = await run(client, items, journal=journal, download_to=tmp_path / "out")

    assert 5 == len(await states(journal))
    assert 5 == len({r.key for r in first}) == len({f.path for r in first for f in r.files})
    assert all(r.ok and r.resumed for r in again)
    assert 5 == emulator.counters.submits


# -- 5: no error that is not ours kills a batch -----------------------------------------------


async def test_5_an_unparsable_receipt_is_journaled_and_kept(
    png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """A submit answer with a port of 99999: the job's id is journaled and followed."""
    queue = "https://queue.example"
    bad = {
        "request_id": "r1",
        "status_url": "https://queue.example:99999/x/status",
        "response_url": "http://[::1/x",
        "cancel_url": "https://queue.example:99999/c",
    }
    status = {"status": "COMPLETED", "logs": None}
    image = {"images": [{"url": png_data_uri}]}

    def handler(request: Request) -> Response:
        if request.method == "POST":
            return Response(status=200, json=bad)
        return Response(status=200, json=status if "status" in request.url else image)

    transport = MockTransport(handler)
    async with AsyncClient(
        api_key="k", queue_url=queue, transport=transport, polling=_poll_only()
    ) as client:
        (result,) = await run(client, [("a", edit(png_data_uri))], journal=ledger)

    assert result.ok and "r1" == result.request_id
    assert {JournalState.COMPLETED} == set((await states(ledger)).values())


def _poll_only() -> Any:
    from fal_edit_async import Polling

    return Polling(use_stream=False, queued_interval=0, in_progress_interval=0)


async def test_5_a_corrupt_row_fails_its_item_only(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """A row whose stored output is garbage: that item fails, the others complete."""
    journal = ledger
    items = [(f"k{i}", edit(png_data_uri, f"p{i}")) for i in range(3)]
    await run(client, items, journal=journal)
    execute(journal, "UPDATE {items} SET output = '{{\"images\": 5}}' WHERE key LIKE 'k1@%%'")

    again = {r.key: r for r in await run(client, items, journal=journal)}

    assert again["k0"].ok and again["k2"].ok
    assert ItemState.FAILED is again["k1"].state
    assert isinstance(again["k1"].error, ProtocolError)  # the row's garbage, named as such


async def test_5_an_unwritable_journal_stops_new_submits_and_loses_no_paid_job(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """The journal fails mid-batch: what fal accepted is followed, nothing more is submitted."""
    journal = ledger
    items = [(f"k{i}", edit(png_data_uri, f"p{i}")) for i in range(6)]
    emulator.hold_jobs()
    async with client.edit_many(items, journal=journal, concurrency=2) as batch:
        await emulator.wait_submitted(2)
        break_writes(journal)  # another hand makes every further write fail
        emulator.release_jobs()
        results = [r async for r in batch]

    by_state: dict[ItemState, int] = {}
    for r in results:
        by_state[r.state] = by_state.get(r.state, 0) + 1
    assert 2 == emulator.counters.submits
    assert 2 == by_state.get(ItemState.COMPLETED, 0)
    assert 4 == by_state.get(ItemState.NOT_SUBMITTED, 0)


# -- 6: a result that lags its status is not a failed job ------------------------------------


async def test_6_still_in_progress_after_completion_is_asked_again(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """fal's 400 "Request is still in progress" after COMPLETED: retried, never journaled failed."""
    emulator.schedule_fault("result", "result_in_progress", times=2)

    (result,) = await run(client, [("a", edit(png_data_uri))], journal=ledger)

    assert result.ok
    assert 2 == client.statistics().retries.not_ready
    assert {JournalState.COMPLETED} == set((await states(ledger)).values())


# -- 7: cancelled by someone else ---------------------------------------------------------------


async def test_7_a_job_cancelled_elsewhere_is_recorded_and_resubmitted_next_time(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """Cancelled from the dashboard: reported cancelled once, then submitted again, once."""
    journal = ledger
    emulator.hold_queue()
    async with client.edit_many([("a", edit(png_data_uri))], journal=journal) as batch:
        await emulator.wait_submitted(1)
        await client.cancel(next(iter(emulator.jobs)))
        (first,) = [r async for r in batch]
    emulator.release_queue()

    (again,) = await run(client, [("a", edit(png_data_uri))], journal=journal)
    (third,) = await run(client, [("a", edit(png_data_uri))], journal=journal)

    assert (ItemState.CANCELLED, True, True) == (first.state, again.ok, third.ok)
    assert (2, 1) == (emulator.counters.submits, most_billed(emulator))


# -- 8, 9: resumes download into this run's folder; retries survive a resume ------------------


async def test_8_a_no_download_journal_then_an_out_folder_downloads(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """Written without downloads, resumed with a folder: the files arrive, nothing is paid."""
    journal, out = ledger, tmp_path / "out"
    await run(client, [("a", edit(png_data_uri))], journal=journal)

    (again,) = await run(client, [("a", edit(png_data_uri))], journal=journal, download_to=out)

    assert again.ok and 1 == len(again.files) and again.files[0].path.parent == out
    assert again.files[0].path.exists()
    assert 1 == emulator.counters.submits


async def test_9_another_out_folder_gets_the_files(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """A rerun with another --out writes there, from the kept output, paying nothing."""
    journal = ledger
    await run(client, [("a", edit(png_data_uri))], journal=journal, download_to=tmp_path / "A")

    (again,) = await run(
        client, [("a", edit(png_data_uri))], journal=journal, download_to=tmp_path / "B"
    )

    assert [tmp_path / "B"] == [f.path.parent for f in again.files]
    assert 1 == emulator.counters.submits


async def test_9_a_resumed_job_that_fails_keeps_its_job_retry(
    best_effort: Emulator, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """Re-attached after a crash, the job fails with a runner error: it still gets its retry."""
    emu, journal = best_effort, ledger
    emu.hold_jobs()
    async with client_for(emu) as client:
        async with client.edit_many([("a", edit(png_data_uri))], journal=journal):
            await emu.wait_jobs_held(1)
            await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
        emu.fail_job(next(iter(emu.jobs)), "runner_disconnected")
        emu.release_jobs()

        (again,) = await run(client, [("a", edit(png_data_uri))], journal=journal)

    assert again.ok and 2 == again.attempts
    assert 2 == emu.counters.submits


async def test_9_a_budget_refusal_of_a_job_retry_is_not_final(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """No budget for the retry: not recorded as failed; more budget next run retries it."""
    journal, items = ledger, [("a", edit(png_data_uri))]
    cost = float(_cost(items))
    emulator.schedule_fault("job", "model_failure", error_type="runner_disconnected")
    (first,) = await run(client, items, journal=journal, budget=cost)
    assert ItemState.FAILED is first.state
    assert {JournalState.SUBMITTED} == set((await states(journal)).values())

    (again,) = await run(client, items, journal=journal, budget=cost * 3)

    assert again.ok
    assert 2 == emulator.counters.submits


async def test_9_the_key_holds_the_endpoint(png_data_uri: str, tmp_path: Path, ledger: Any) -> None:
    """The same input on two endpoints is two items, two jobs."""
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        items = [("a", edit(png_data_uri))]
        await run(client, items, journal=ledger)
        await run(client, items, journal=ledger, endpoint="fal-ai/gpt-image-1/other")

        assert 2 == emu.counters.submits
        assert 2 == len(await states(ledger))


# -- 10: results expire on fal; the journal keeps them -----------------------------------------


async def test_10_a_kept_output_outlives_fal_s_copy(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """The result expired on fal: the rerun downloads from the output the journal kept."""
    journal = ledger
    (first,) = await run(client, [("a", edit(png_data_uri))], journal=journal)
    emulator.expire_result(first.request_id)

    (again,) = await run(
        client, [("a", edit(png_data_uri))], journal=journal, download_to=tmp_path / "out"
    )

    assert again.ok and again.files
    assert 1 == emulator.counters.submits


async def test_10_a_job_fal_forgot_is_a_clear_end_not_a_retry_loop(
    best_effort: Emulator, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """Never fetched and now expired: failed as result_expired, once; --retry-failed resubmits."""
    emu, journal, items = best_effort, ledger, [("a", edit(png_data_uri))]
    emu.hold_jobs()
    async with client_for(emu) as client:
        async with client.edit_many(items, journal=journal):
            await emu.wait_jobs_held(1)
            await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
        emu.release_jobs()
        await emu.wait_completed(1)
        emu.expire_all_results()

        (first,) = await run(client, items, journal=journal)
        requests = len(emu.counters.request_log)
        (second,) = await run(client, items, journal=journal)
        assert requests == len(emu.counters.request_log)  # from the journal: nothing asked
        (third,) = await run(client, items, journal=journal, retry_failed=True)

    assert (ItemState.FAILED, "result_expired") == (first.state, first.error.error_type)
    assert ItemState.FAILED is second.state
    assert third.ok and 2 == emu.counters.submits


# -- 12: a submit error that names its job -----------------------------------------------------


async def test_12_a_5xx_naming_the_queued_job_is_followed(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """fal queued the job and answered 500 with its x-fal-request-id: that job is the item's."""
    emulator.schedule_fault("submit", "server_error_after_queue")

    (result,) = await run(client, [("a", edit(png_data_uri))], journal=ledger)

    assert result.ok
    assert (1, 1) == (emulator.counters.submits, most_billed(emulator))


# -- 13: the paid submit is on disk, fsynced --------------------------------------------------


async def test_13_the_submit_rows_are_fsynced_before_the_run_goes_on(
    client: AsyncClient, png_data_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both rows of a paid submit are followed by an fsync of the journal's WAL before the
    next write (what synchronous=FULL does); the rest commit under NORMAL, with none."""
    path = tmp_path / "j"
    wal = str(path.resolve()) + "-wal"
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == wal:
            seen.append("FSYNC")

    monkeypatch.setattr(os, "fsync", fsync)
    journal = Journal(path)
    await journal.open()
    assert journal._db is not None
    journal._db.set_trace_callback(seen.append)
    try:
        await run(client, [("a", edit(png_data_uri))], journal=journal)
    finally:
        await journal.aclose()
    steps = [s for s in seen if s.startswith(("INSERT", "FSYNC"))]
    inserts = [i for i, s in enumerate(steps) if s.startswith("INSERT")]
    synced = [i + 1 < len(steps) and steps[i + 1] == "FSYNC" for i in inserts]

    assert [True, True, False] == synced[:3]  # submitting, submitted; then completed


# -- 14: a death between fal's answer and the commit ------------------------------------------


async def test_14_a_row_left_mid_submit_is_unknown_and_reported(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """A run died after sending a submit: the rerun reports unknown and pays nothing, unless
    told to resubmit."""
    journal, items = ledger, [("a", edit(png_data_uri))]
    await run(client, items, journal=journal)  # learn the row's key
    (key,) = await states(journal)
    async with open_journal(journal) as j:  # a run that dies right after the write
        await j.claim(key)
        await j.record_submitting(key, endpoint="e", input={}, attempts=1, cost=_cost(items))

    (reported,) = await run(client, items, journal=journal, download_to=tmp_path / "o")
    unknown_after_report = await states(journal)
    async with open_journal(journal, read_only=True) as j:  # what `fal-edit journal show` lists
        listed = [e.key for e in (await j.summary()).unknown]
    (resubmitted,) = await run(
        client, items, journal=journal, download_to=tmp_path / "o", resubmit_unknown=True
    )

    assert ItemState.UNKNOWN is reported.state
    assert isinstance(reported.error, UnknownSubmitError)
    assert JournalState.UNKNOWN is unknown_after_report[key]
    assert [key] == listed
    assert resubmitted.ok
    assert 2 == emulator.counters.submits


def break_writes(journal: Path | str) -> None:
    """Every further write to the journal's rows fails, as on a full disk."""
    if isinstance(journal, str):
        execute(
            journal,
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$",
        )
        execute(
            journal,
            "CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON {items} "
            "FOR EACH ROW EXECUTE FUNCTION disk_full()",
        )
        return
    execute(
        journal,
        "CREATE TRIGGER no_more BEFORE UPDATE ON {items} "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    execute(
        journal,
        "CREATE TRIGGER no_new BEFORE INSERT ON {items} "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )


def _cost(items: Any) -> Any:
    from fal_edit_async import estimate_cost

    return estimate_cost(items[0][1]).usd


# -- 11: SIGTERM like the first Ctrl-C ----------------------------------------------------------


async def test_11_sigterm_cancels_summarises_and_exits_143(
    emulator: Emulator, tmp_path: Path, ledger: Any
) -> None:
    """`docker stop`: the jobs are cancelled on fal, the summary printed, exit 143, no temp."""
    emulator.hold_jobs()
    write_images(tmp_path / "in", "a.png", "b.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env |= {
        "FAL_KEY": emulator.api_key,
        "FAL_QUEUE_URL": emulator.queue_url,
        "FAL_REST_URL": emulator.rest_url,
    }
    command = [
        sys.executable,
        "-m",
        "fal_edit_async",
        "edit",
        "p",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
        "--journal",
        str(ledger),
    ]
    async with await anyio.open_process(command, env=env) as process:
        await emulator.wait_in_flight(2)
        await emulator.wait_until(lambda: emulator.counters.streams_opened >= 2)
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        err = b"".join([c async for c in process.stderr]).decode()
        assert 143 == await process.wait()

    assert 2 == emulator.counters.cancels
    assert "SIGTERM: cancelling 2 jobs on fal" in err
    assert "of 2" in err  # the summary line
    assert [] == list((tmp_path / "out").glob(".*.part"))


# -- InternalError ------------------------------------------------------------------------------


async def test_a_bug_in_a_callback_is_its_items_internal_error(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """A foreign error inside one item fails that item as InternalError, cause kept."""

    def on_event(event: object) -> None:
        if getattr(event, "key", None) == "bad" and type(event).__name__ == "ItemSubmitted":
            raise KeyError("oops")

    items = [EditItem(input=edit(png_data_uri, "x"), name="bad"), ("good", edit(png_data_uri))]
    results = {r.key: r for r in await run(client, items, on_event=on_event)}

    assert isinstance(results["bad"].error, InternalError)
    assert isinstance(results["bad"].error.__cause__, KeyError)
    assert results["good"].ok


# -- a refused write tried again as the batch closes: never on a shared ledger --------------


def refuse_state(journal: Path | str, state: str) -> None:
    """Every write moving a row to ``state`` fails, as on a full disk (see ``allow_state``)."""
    if isinstance(journal, str):
        execute(
            journal,
            "CREATE FUNCTION refused() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$",
        )
        execute(
            journal,
            "CREATE TRIGGER refused BEFORE UPDATE ON {items} FOR EACH ROW "
            f"WHEN (NEW.state = '{state}') EXECUTE FUNCTION refused()",
        )
        return
    execute(
        journal,
        f"CREATE TRIGGER refused BEFORE UPDATE ON {{items}} WHEN NEW.state = '{state}' "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )


def allow_state(journal: Path | str) -> None:
    """The disk frees: :func:`refuse_state` undone."""
    execute(journal, "DROP TRIGGER refused" + (" ON {items}" if isinstance(journal, str) else ""))


async def test_a_refused_write_is_tried_again_late_only_on_a_private_ledger(
    png_data_uri: str, tmp_path: Path, ledger: Any
) -> None:
    """The 'downloaded' write is refused, then the disk frees before the batch ends. A
    private journal takes the write as the batch closes. A shared one does not (the item's
    lease is gone by then, and another worker may have moved its row on): its row stays
    'completed', and the batch reports the journal error."""
    async with open_journal(ledger):
        pass
    refuse_state(ledger, "downloaded")
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        async with client.edit_many(
            [("a", edit(png_data_uri))], journal=ledger, download_to=tmp_path / "out"
        ) as batch:
            results = []
            async for result in batch:
                results.append(result)
                allow_state(ledger)

    shared = isinstance(ledger, str)
    assert [ItemState.COMPLETED] == [r.state for r in results]
    expected = JournalState.COMPLETED if shared else JournalState.DOWNLOADED
    assert [expected] == list((await states(ledger)).values())
    assert shared == isinstance(batch.summary().journal_error, JournalError)
