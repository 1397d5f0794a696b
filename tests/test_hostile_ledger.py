"""A hostile review of the batch ledger: each test is a promise that once broke, and holds
now.

They came from attacking the code as a hostile user and a hostile server would; each was
written failing (a strict xfail) and its marker removed with the fix. The emulator (over
loopback HTTP) or ``MockTransport`` plays the server; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from fal_edit_async import (
    AiohttpTransport,
    AsyncClient,
    EditImageInput,
    EditItem,
    ItemCompleted,
    ItemFailed,
    ItemState,
    ItemSubmitted,
    JobFailedError,
    Journal,
    JournalError,
    JournalLockedError,
    Request,
    Response,
    RetryPolicy,
    estimate_cost,
    open_journal,
)
from fal_edit_async._batch._items import describe_input, fingerprint
from fal_edit_async.emulator import Emulator

from ._postgres import execute
from .conftest import client_for, make_png
from .test_cli_support import emulator_thread, write_images
from .test_ledger import edit, most_billed, run

WORKER = Path(__file__).with_name("journal_worker.py")


async def rows(journal: Path) -> dict[str, Any]:
    """Each journaled key's entry."""
    async with Journal(journal, read_only=True) as j:
        return {e.key: e for e in await j.entries()}


def fal_env(emu: Emulator) -> dict[str, str]:
    """The environment of a CLI process pointed at ``emu``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    return env | {
        "FAL_KEY": emu.api_key,
        "FAL_QUEUE_URL": emu.queue_url,
        "FAL_REST_URL": emu.rest_url,
    }


# -- one writer per journal ----------------------------------------------------------------


async def test_a_symlink_to_a_journal_is_the_same_journal(tmp_path: Path) -> None:
    """A second writer reaching the journal through a symlink is refused like any other."""
    (tmp_path / "link").symlink_to(tmp_path / "j")
    async with Journal(tmp_path / "j"):
        with pytest.raises(JournalLockedError):
            async with Journal(tmp_path / "link"):
                pass


async def test_a_hard_link_to_a_journal_is_the_same_journal(tmp_path: Path) -> None:
    """A second writer reaching the journal file through a hard link is refused."""
    async with Journal(tmp_path / "j"):  # an earlier run's journal...
        pass
    os.link(tmp_path / "j", tmp_path / "h")  # ...linked into another folder
    async with Journal(tmp_path / "j"):
        with pytest.raises(JournalLockedError):
            async with Journal(tmp_path / "h"):
                pass


async def test_deleting_the_lock_file_lets_no_second_writer_in(tmp_path: Path) -> None:
    """Cleaning up a 'stale' ``.lock`` while a run holds it does not admit a second writer."""
    async with Journal(tmp_path / "j"):
        (tmp_path / "j.lock").unlink()
        with pytest.raises(JournalLockedError):
            async with Journal(tmp_path / "j"):
                pass


async def test_two_batches_given_one_journal_object_are_one_writer_too(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, ledger: Any
) -> None:
    """The file lock refuses a second journal object, not a second batch handed the same one:
    both read the same empty rows and paid for every item twice. The second batch is refused
    before it sends anything, on each backend, and the object serves a batch again after."""
    items = [(f"k{i}", edit(png_data_uri, f"p{i}")) for i in range(4)]
    async with open_journal(ledger) as journal:
        async with client.edit_many(items, journal=journal) as first:
            with pytest.raises(JournalLockedError, match="another batch of this process"):
                async with client.edit_many(items, journal=journal):
                    pass
            assert all([r.ok async for r in first])
        again = await run(client, items, journal=journal)
    assert 4 == emulator.counters.submits and 1 == most_billed(emulator)
    assert all(r.ok and r.resumed for r in again)


async def test_reconciling_the_journal_object_a_batch_writes_is_refused(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """``client.reconcile(journal)`` says it raises JournalLockedError while a batch writes the
    journal; for the batch's own SQLite journal object it ran (atk14). It raises, and works
    once the batch is over."""
    items = [(f"k{i}", edit(png_data_uri, f"p{i}")) for i in range(2)]
    async with Journal(tmp_path / "j") as journal:
        async with client.edit_many(items, journal=journal) as batch:
            with pytest.raises(JournalLockedError, match="a batch of this process"):
                await client.reconcile(journal)
            assert all([r.ok async for r in batch])
        report = await client.reconcile(journal)
    assert () == report.rows  # every row settled by the batch: nothing left to reconcile


class _Meeting:
    """Holds journal look-ups until ``expected`` runs have made theirs (a run that is refused
    stops being expected): two runs started by one cron tick both look the item up before
    either submits it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived: list[anyio.Event] = []

    def check(self) -> None:
        if len(self.arrived) >= self.expected:
            for event in self.arrived:
                event.set()

    async def arrive(self) -> None:
        self.arrived.append(anyio.Event())
        self.check()
        await self.arrived[-1].wait()

    def refused(self) -> None:
        self.expected -= 1
        self.check()


class _MeetingJournal(Journal):
    """A journal whose look-ups wait at a :class:`_Meeting`."""

    def __init__(self, path: Path, meeting: _Meeting) -> None:
        super().__init__(path)
        self.meeting = meeting

    async def get(self, key: str) -> Any:
        entry = await super().get(key)
        await self.meeting.arrive()
        return entry


async def test_two_runs_on_one_journal_through_a_symlink_pay_once(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """Two overlapping runs on one journal, one through a symlink: the item is paid once."""
    (tmp_path / "link").symlink_to(tmp_path / "j")
    meeting = _Meeting(2)
    items = [("a", edit(png_data_uri))]

    async def one_run(path: Path) -> None:
        journal = _MeetingJournal(path, meeting)
        try:
            async with client_for(emulator) as client:
                await run(client, items, journal=journal)
        except JournalLockedError:
            meeting.refused()
        finally:
            await journal.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(one_run, tmp_path / "j")
        tg.start_soon(one_run, tmp_path / "link")

    assert 1 == most_billed(emulator)


# -- items are known by their content --------------------------------------------------------


async def test_a_renamed_input_file_is_not_paid_again(
    emulator: Emulator, client: AsyncClient, tmp_path: Path
) -> None:
    """Renaming (or moving) an input between runs changes no item's identity: nothing is paid
    again for the same image and prompt."""
    (before,) = write_images(tmp_path / "in", "a.png")
    journal, out = tmp_path / "j", tmp_path / "out"
    await run(client, [edit(before)], journal=journal, download_to=out)
    after = before.rename(tmp_path / "in" / "b.png")

    (again,) = await run(client, [edit(after)], journal=journal, download_to=out)

    assert again.ok and again.resumed
    assert (1, 1) == (emulator.counters.submits, most_billed(emulator))


async def test_an_input_replaced_in_place_is_edited_not_served_stale(
    emulator: Emulator, client: AsyncClient, tmp_path: Path
) -> None:
    """A new image saved over an input's file is a new item: it is edited, not answered with
    the old image's output."""
    path = tmp_path / "a.png"
    path.write_bytes(make_png(color=(200, 40, 40)))
    journal = tmp_path / "j"
    await run(client, [edit(path)], journal=journal)
    path.write_bytes(make_png(color=(10, 10, 250)))  # another photo, same file name

    (again,) = await run(client, [edit(path)], journal=journal)

    assert not again.resumed
    assert 2 == emulator.counters.submits


# -- a journal written by the previous release (schema 1, commit e3351d8) ---------------------

#: The schema-1 tables, as ``_journal.py`` created them at e3351d8.
SCHEMA_1 = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    key TEXT PRIMARY KEY, state TEXT NOT NULL, request_id TEXT, endpoint TEXT,
    status_url TEXT, response_url TEXT, cancel_url TEXT, input TEXT, output TEXT, files TEXT,
    error TEXT, error_type TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    cost TEXT NOT NULL DEFAULT '0', updated_at REAL NOT NULL
);
INSERT INTO meta VALUES ('schema', '1');
"""


async def _paid_job(emu: Emulator, input: EditImageInput) -> Any:
    """A job for ``input`` that ran to a billed end, as the previous release submitted it."""
    async with client_for(emu) as client:
        handle = await client.submit(input)
        await handle.result()
    return handle


def _schema_1_journal(path: Path, key: str, state: str, handle: Any, input: Any) -> None:
    """A schema-1 journal with one row, as the previous release wrote it."""
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
    _schema_1_row(path, key, state, handle, input)


def _schema_1_row(path: Path, key: str, state: str, handle: Any, input: Any) -> None:
    """One more row in a schema-1 journal, as the previous release wrote it."""
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO items (key, state, request_id, endpoint, status_url, response_url, "
            "cancel_url, input, attempts, cost, updated_at) VALUES (?,?,?,?,?,?,?,?,1,?,0)",
            (
                key,
                state,
                handle.request_id,
                str(handle.endpoint),
                handle.urls.status_url,
                handle.urls.response_url,
                handle.urls.cancel_url,
                json.dumps(describe_input(input)),
                str(estimate_cost(input).usd),
            ),
        )
    sqlite3.connect(path).close()


def test_a_schema_1_cli_journal_resumes_without_paying_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fal-edit edit ... --journal J` on a journal the previous release wrote re-attaches to
    its jobs: upgrading pays nothing again."""
    from fal_edit_async._cli import main
    from fal_edit_async._cli._inputs import expand, plan_edit

    (image,) = write_images(tmp_path / "in", "a.png")
    (planned,) = plan_edit("p", expand([str(image)]), {}, together=False)
    assert planned.input is not None
    journal = tmp_path / "j"
    with emulator_thread(monkeypatch) as (portal, emu):
        handle = portal.call(_paid_job, emu, planned.input)
        # The previous CLI passed (name, input): its rows are "<name>@<fingerprint>".
        key = f"{planned.key}@{fingerprint(describe_input(planned.input))}"
        _schema_1_journal(journal, key, "submitted", handle, planned.input)

        status = main(
            ["edit", "p", str(image), "--journal", str(journal), "--out", str(tmp_path / "o")]
        )

        assert 0 == status
        assert (1, 1) == (emu.counters.submits, most_billed(emu))


async def test_a_schema_1_cancelled_row_is_asked_of_fal_before_paying_again(
    tmp_path: Path, png_data_uri: str
) -> None:
    """A schema-1 row 'cancelled' (written when a run was left, whatever fal answered) whose
    job ran on to a billed end is used, not paid again."""
    items = [("a", edit(png_data_uri))]
    journal = tmp_path / "j"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        handle = await _paid_job(emu, items[0][1])
        key = f"a@{fingerprint(describe_input(items[0][1]))}"
        _schema_1_journal(journal, key, "cancelled", handle, items[0][1])

        (again,) = await run(client, items, journal=journal)

        assert again.ok and again.resumed
        assert 1 == most_billed(emu)


async def test_repeats_in_a_schema_1_journal_each_resume_their_own_paid_job(
    tmp_path: Path, png_data_uri: str
) -> None:
    """The previous CLI named two identical lines ``in0`` and ``in0-2``, and paid for both.
    After the upgrade the first item took one of those rows and the repeat (``~2``) never
    looked for the other: it paid a third time (atk14 A). Each takes one now."""
    input = edit(png_data_uri)
    print_ = fingerprint(describe_input(input))
    journal = tmp_path / "j"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        first, second = await _paid_job(emu, input), await _paid_job(emu, input)
        _schema_1_journal(journal, f"in0@{print_}", "submitted", first, input)
        _schema_1_row(journal, f"in0-2@{print_}", "submitted", second, input)

        again = await run(client, [input, input], journal=journal)

        assert all(r.ok and r.resumed for r in again)
        assert {first.request_id, second.request_id} == {r.request_id for r in again}
        assert 2 == emu.counters.submits


async def test_a_keyed_items_row_is_never_taken_for_a_schema_1_row(
    tmp_path: Path, png_data_uri: str
) -> None:
    """In a journal migrated from schema 1, a keyed item's new row (``x@<fingerprint>``) has
    the shape of a schema-1 ``<name>@<fingerprint>`` row: an unkeyed item of the same content
    took it over, with the keyed item's job and file (atk14 B). Only the rows schema 1 wrote
    count as its rows."""
    input, other = edit(png_data_uri), edit(png_data_uri, "another prompt")
    journal = tmp_path / "j"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        old = await _paid_job(emu, other)
        _schema_1_journal(
            journal, f"o@{fingerprint(describe_input(other))}", "submitted", old, other
        )
        (keyed,) = await run(client, [("x", input)], journal=journal)

        again = await run(client, [("x", input), input], journal=journal)

        by_key = {r.key: r for r in again}
        assert by_key["x"].resumed and by_key["x"].request_id == keyed.request_id
        (unkeyed,) = (r for r in again if r.key != "x")
        assert unkeyed.ok and not unkeyed.resumed and unkeyed.request_id != keyed.request_id
        assert 3 == emu.counters.submits


def test_journal_show_reads_a_schema_1_journal(
    tmp_path: Path, png_data_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fal-edit journal show` on a journal of the previous release prints its summary."""
    from fal_edit_async._cli import main

    urls = SimpleNamespace(status_url="https://queue.fal.run/x", response_url="", cancel_url="")
    handle = SimpleNamespace(request_id="r1", endpoint="fal-ai/gpt-image-1/edit-image", urls=urls)
    journal = tmp_path / "j"
    _schema_1_journal(journal, "k", "submitted", handle, edit(png_data_uri))

    status = main(["journal", "show", str(journal), "--json"])

    out, err = capsys.readouterr()
    assert (0, "") == (status, err)
    assert {"submitted": 1} == json.loads(out)["counts"]


# -- killed, interrupted, left early --------------------------------------------------------


async def test_journal_show_after_a_kill_mid_submit_lists_the_item_as_unknown(
    emulator: Emulator, tmp_path: Path
) -> None:
    """kill -9 while a submit POST is in flight: `fal-edit journal show --json` lists the
    item as unknown (no run is live to answer for it)."""
    journal = tmp_path / "j"
    emulator.schedule_fault("submit", "slow_response", delay=60)
    command = [
        sys.executable, str(WORKER), emulator.queue_url, emulator.api_key, str(journal),
        str(tmp_path / "out"), "1", "1", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    async with await anyio.open_process(command, env=env) as worker:
        await emulator.wait_slow_held(1)  # the POST reached fal; its answer is held
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    emulator.release_slow()

    shown = await anyio.run_process(
        [sys.executable, "-m", "fal_edit_async", "journal", "show", str(journal), "--json"],
        env=fal_env(emulator),
    )

    summary = json.loads(shown.stdout)
    assert 1 == len(summary["unknown"]), summary


async def test_an_item_cut_short_in_a_rate_limit_backoff_is_submitted_next_run(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """Ctrl-C while fal rate-limits: an item whose only submit fal answered 429 (no job) is
    submitted by the next run, not held back as 'unknown'."""
    journal, items = tmp_path / "j", [("a", edit(png_data_uri))]
    emulator.schedule_fault("submit", "rate_limit", retry_after=60)
    async with client_for(emulator, retry=RetryPolicy(max_attempts=4)) as patient:
        async with patient.edit_many(items, journal=journal):
            await emulator.wait_until(lambda: emulator.counters.faults_injected["rate_limit"] > 0)
    assert 0 == emulator.counters.submits  # fal queued nothing

    async with client_for(emulator) as client:
        (again,) = await run(client, items, journal=journal)

    assert ItemState.COMPLETED is again.state, again.error
    assert 1 == emulator.counters.submits


async def test_a_job_a_5xx_named_is_kept_when_the_batch_is_left_while_checking_it(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """fal queued the job and answered 500 naming it; the batch is left while the client
    checks that job: it is cancelled on fal, or its request id is journaled."""
    journal, items = tmp_path / "j", [("a", edit(png_data_uri))]
    emulator.schedule_fault("submit", "server_error_after_queue")
    emulator.schedule_fault("status", "slow_response", delay=60)
    async with client.edit_many(items, journal=journal):
        await emulator.wait_slow_held(1)
    (request_id,) = emulator.jobs
    emulator.release_slow()

    (row,) = (await rows(journal)).values()
    assert emulator.counters.cancels > 0 or row.request_id == request_id


async def test_an_unknown_row_naming_its_job_is_re_attached_by_the_next_run(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A 5xx named the queued job but its status could not be read then: the next run
    re-attaches to that job (fal now answers for it) instead of reporting it unknown."""
    journal, items = tmp_path / "j", [("a", edit(png_data_uri))]
    emulator.schedule_fault("submit", "server_error_after_queue")
    emulator.schedule_fault("status", "server_error", times=4)  # FAST_RETRY's attempts
    (first,) = await run(client, items, journal=journal)
    assert (ItemState.UNKNOWN, first.request_id) == (first.state, next(iter(emulator.jobs)))

    (again,) = await run(client, items, journal=journal)

    assert again.ok
    assert (1, 1) == (emulator.counters.submits, most_billed(emulator))


# -- a hostile server --------------------------------------------------------------------------


class _Mislabelling(AiohttpTransport):
    """Forwards every request to the emulator (so fal really queues and bills), but answers
    the submit of ``prompt`` with ``answer(real_response)`` instead."""

    def __init__(self, prompt: str, answer: Callable[[Response], Response]) -> None:
        super().__init__()
        self.prompt, self.answer = prompt, answer

    async def request(self, request: Request) -> Response:
        response = await super().request(request)
        body = request.json if isinstance(request.json, Mapping) else {}
        if request.method == "POST" and body.get("prompt") == self.prompt:
            return self.answer(response)
        return response


async def test_a_5xx_naming_another_items_job_is_not_adopted(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """A submit answered 500 whose x-fal-request-id is another item's job: the item is not
    delivered that job's output as its own (its own job may be running and billing)."""
    journal = tmp_path / "j"
    async with client_for(emulator) as client:
        (b,) = await run(client, [("b", edit(png_data_uri, "b"))], journal=journal)

    def named_b(real: Response) -> Response:
        body = {"detail": "Internal Server Error", "error_type": "internal_error"}
        return Response(status=500, json=body, headers={"x-fal-request-id": b.request_id})

    hostile = _Mislabelling("a", named_b)
    async with client_for(emulator, transport=hostile) as client:
        (a,) = await run(client, [("a", edit(png_data_uri, "a"))], journal=journal)

    assert a.request_id != b.request_id
    assert not a.ok


async def test_one_request_id_for_two_items_is_not_two_completed_items(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """A server that answers two different submits with the same request id: the ledger
    does not record one job as two items' paid, completed work."""
    journal = tmp_path / "j"
    async with client_for(emulator) as client:
        (b,) = await run(client, [("b", edit(png_data_uri, "b"))], journal=journal)
    receipt = {
        "status": "IN_QUEUE",
        "request_id": b.request_id,
        "status_url": f"{emulator.queue_url}/fal-ai/gpt-image-1/requests/{b.request_id}/status",
        "response_url": f"{emulator.queue_url}/fal-ai/gpt-image-1/requests/{b.request_id}",
        "cancel_url": f"{emulator.queue_url}/fal-ai/gpt-image-1/requests/{b.request_id}/cancel",
    }

    hostile = _Mislabelling("a", lambda real: Response(status=200, json=receipt))
    async with client_for(emulator, transport=hostile) as client:
        await run(client, [("a", edit(png_data_uri, "a"))], journal=journal)

    owners = [k for k, e in (await rows(journal)).items() if e.request_id == b.request_id]
    assert 1 == len(owners), owners


# -- changing things between runs --------------------------------------------------------------


async def test_a_new_item_never_overwrites_a_resumed_items_output(
    png_data_uri: str, tmp_path: Path
) -> None:
    """A line added in front of a finished one, with the same name: it writes its own file and
    the finished item's output stays on disk as reported."""
    journal, out = tmp_path / "j", tmp_path / "out"
    old = EditItem(input=edit(png_data_uri, "black and white"), name="photo")
    new = EditItem(input=edit(png_data_uri, "pixel art"), name="photo")
    async with Emulator(workers=2) as emu, client_for(emu) as client:
        (first,) = await run(client, [old], journal=journal, download_to=out)
        kept = first.files[0].path.read_bytes()
        emu.hold_jobs()
        async with client.edit_many([new, old], journal=journal, download_to=out) as batch:
            results = batch.__aiter__()
            resumed = await results.__anext__()  # the finished item, from the journal
            emu.release_jobs()
            added = await results.__anext__()

    assert resumed.resumed and added.ok and not added.resumed
    assert added.files[0].path != resumed.files[0].path
    assert kept == resumed.files[0].path.read_bytes()


async def test_a_job_accepted_when_the_disk_fills_stays_re_attachable(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The disk fills just after the write-ahead row: the job fal accepted is followed to its
    end in that run, and the next run (disk freed) pays nothing: no row could name its job,
    so reconciling finds it in fal's history by the body sent, and adopts it."""
    journal, items = tmp_path / "j", [("a", edit(png_data_uri))]
    async with Journal(journal):  # create the file, then let only 'submitting' rows land
        pass
    with sqlite3.connect(journal) as db:
        db.execute(
            "CREATE TRIGGER full BEFORE UPDATE ON items WHEN NEW.state != 'submitting' "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    (first,) = await run(client, items, journal=journal)
    assert first.ok  # followed to its end in that run, as promised
    with sqlite3.connect(journal) as db:
        db.execute("DROP TRIGGER full")

    (again,) = await run(client, items, journal=journal)

    assert again.ok and again.resumed, again.error
    assert first.request_id is not None and first.request_id == again.request_id
    assert 1 == emulator.counters.submits


async def test_the_default_endpoint_spelt_with_slashes_is_the_same_item(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """`--endpoint /fal-ai/gpt-image-1/edit-image/` is the default endpoint: a rerun spelling
    it so re-attaches instead of paying again."""
    journal, items = tmp_path / "j", [("a", edit(png_data_uri))]
    await run(client, items, journal=journal)

    (again,) = await run(client, items, journal=journal, endpoint="/fal-ai/gpt-image-1/edit-image/")

    assert again.ok and again.resumed
    assert 1 == most_billed(emulator)


def test_naming_a_manifest_line_with_key_pays_nothing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`"key": optional name` (fal-edit batch --help): naming a finished line pays nothing again."""
    from fal_edit_async._cli import main

    write_images(tmp_path, "image.png")
    manifest, journal = tmp_path / "m.jsonl", tmp_path / "j"
    argv = ["batch", str(manifest), "--journal", str(journal), "--out", str(tmp_path / "out")]
    with emulator_thread(monkeypatch) as (_, emu):
        manifest.write_text('{"prompt": "p", "inputs": ["image.png"]}\n')
        assert 0 == main(argv)
        manifest.write_text('{"prompt": "p", "inputs": ["image.png"], "key": "hero"}\n')

        assert 0 == main(argv)

        assert (1, 1) == (emu.counters.submits, most_billed(emu))


# -- what the command line reports when a run is stopped ---------------------------------------


async def _ctrl_c_cli(emu: Emulator, tmp_path: Path, *, mid_post: bool) -> list[dict[str, Any]]:
    """`fal-edit edit p in/ --json` without a journal, stopped by Ctrl-C while its one job runs
    on fal (or while its submit POST is answered); its JSON records."""
    write_images(tmp_path / "in", "a.png")
    command = [
        sys.executable, "-m", "fal_edit_async", "edit", "p", str(tmp_path / "in"),
        "--out", str(tmp_path / "out"), "--json",
    ]  # fmt: skip
    emu.hold_jobs()
    if mid_post:
        emu.schedule_fault("submit", "slow_response", delay=60)
    async with await anyio.open_process(command, env=fal_env(emu)) as process:
        if mid_post:
            await emu.wait_slow_held(1)
        else:
            await emu.wait_jobs_held(1)
            await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        # The run has taken the Ctrl-C (it says so) before fal's answer to the POST arrives.
        await BufferedByteReceiveStream(process.stderr).receive_until(b"Ctrl-C: ", 1 << 20)
        emu.release_slow()
        assert process.stdout is not None
        out = b"".join([chunk async for chunk in process.stdout]).decode()
        assert 130 == await process.wait()
    emu.release_jobs()
    await emu.wait_completed(1)
    assert 1 == emu.counters.billed  # the cancel was best effort: the job ran on and billed
    return [json.loads(line) for line in out.splitlines()]


async def test_ctrl_c_never_reports_a_job_cancelled_that_fal_only_asked_to_stop(
    tmp_path: Path,
) -> None:
    """Ctrl-C: a running job whose cancel fal only accepted (it ran on and billed) is not
    reported 'cancelled on fal before it finished'."""
    async with Emulator(fast_images=True, cancel_running="ignore") as emu:
        (record,) = await _ctrl_c_cli(emu, tmp_path, mid_post=False)

    assert "cancelled" != record["status"], record


async def test_ctrl_c_during_a_submit_still_names_the_job_fal_accepted(tmp_path: Path) -> None:
    """Ctrl-C while fal answers a submit: the run still prints that job's request id (it
    runs and bills), not '1 not started'."""
    async with Emulator(fast_images=True, cancel_running="ignore") as emu:
        records = await _ctrl_c_cli(emu, tmp_path, mid_post=True)
        request_ids = list(emu.jobs)

    assert request_ids == [r.get("request_id") for r in records], records


# -- the budget across runs ----------------------------------------------------------------------


class _LateJournal(Journal):
    """A journal whose look-up of keys starting with ``late`` returns only once ``go`` is set:
    one worker thread slower than another."""

    def __init__(self, path: Path, late: str, go: anyio.Event) -> None:
        super().__init__(path)
        self.late, self.go = late, go

    async def get(self, key: str) -> Any:
        entry = await super().get(key)
        if key.startswith(self.late):
            await self.go.wait()
        return entry


async def test_a_rerun_never_crosses_the_budget_its_journal_already_spent(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The budget already went on item a (journaled); the rerun with the same budget submits no
    new item b, whichever of the two the journal answers first."""
    a, b = ("a", edit(png_data_uri, "a")), ("b", edit(png_data_uri, "b"))
    budget = float(estimate_cost(a[1]).usd)
    await run(client, [a], journal=tmp_path / "j", budget=budget)
    b_done = anyio.Event()
    journal = _LateJournal(tmp_path / "j", "a@", b_done)
    try:
        async with client.edit_many([a, b], journal=journal, budget=budget) as batch:
            async for result in batch:
                if result.key == "b":
                    b_done.set()
    finally:
        await journal.aclose()

    assert 1 == emulator.counters.submits, batch.summary()


# -- files that are not (quite) journals ---------------------------------------------------------


async def test_another_programs_database_is_refused_not_adopted(tmp_path: Path) -> None:
    """`--journal photos.db` naming another program's SQLite file: JournalError, file untouched."""
    other = tmp_path / "photos.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE photos (path TEXT)")
    sqlite3.connect(other).close()

    with pytest.raises(JournalError):
        async with Journal(other):
            pass

    with sqlite3.connect(other) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"photos"} == tables


@pytest.fixture
def immutable(tmp_path: Path) -> Any:
    """Make a path immutable (``chattr +i``: read-only even for root) for the test's length."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_journal_show_reads_a_finished_journal_in_a_read_only_folder(
    tmp_path: Path, immutable: Any
) -> None:
    """`fal-edit journal show` reads a finished batch's journal on a read-only folder (a
    backup, a mounted archive)."""
    folder = tmp_path / "archive"
    async with Journal(folder / "j") as journal:
        await journal.record_cancelled("k")
    immutable(folder)

    async with Journal(folder / "j", read_only=True) as journal:
        summary = await journal.summary()

    assert 1 == summary.total


async def test_an_unknown_retry_is_not_listed_under_the_failed_job_before_it(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Job 1 failed (runner error), the retry's submit answer was lost: the unknown row does
    not name job 1, which fal says failed and billed nothing, as the job to look for."""
    journal = tmp_path / "j"
    emulator.schedule_fault("job", "model_failure", error_type="runner_disconnected")

    def lose_the_retry(event: Any) -> None:
        if isinstance(event, ItemSubmitted) and event.attempt == 1:
            emulator.schedule_fault("submit", "server_error")

    (result,) = await run(
        client, [("a", edit(png_data_uri))], journal=journal, on_event=lose_the_retry
    )
    (failed_job,) = emulator.jobs

    assert ItemState.UNKNOWN is result.state
    (row,) = (await rows(journal)).values()
    assert failed_job != row.request_id


def fill_the_disk_for_job_ids(journal: Path) -> None:
    """Every write that gives a row its job's id fails, as on a full disk, until the table
    ``freed`` gets a row (the disk frees)."""
    with sqlite3.connect(journal) as db:
        db.execute("CREATE TABLE freed (n INTEGER)")
        db.execute(
            "CREATE TRIGGER full BEFORE UPDATE ON items WHEN NEW.request_id IS NOT NULL "
            "AND OLD.request_id IS NULL AND NOT EXISTS (SELECT 1 FROM freed) "
            "BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END"
        )


async def journal_refusing(tmp_path: Path, state: str) -> Path:
    """A new journal that refuses every write moving a row to ``state``, as a full disk."""
    journal = tmp_path / "j"
    async with Journal(journal):
        pass
    with sqlite3.connect(journal) as db:
        db.execute(
            f"CREATE TRIGGER full BEFORE UPDATE ON items WHEN NEW.state = '{state}' "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    return journal


async def journal_full_until(
    tmp_path: Path, event_type: type[Any] | None = None
) -> tuple[Path, Path, Callable[[Any], None]]:
    """A new journal whose writes that name a job fail (:func:`fill_the_disk_for_job_ids`)
    until the batch emits an ``event_type`` event: its path, an output folder, and the
    ``on_event`` listener that frees the disk."""
    journal = tmp_path / "j"
    async with Journal(journal):
        pass
    fill_the_disk_for_job_ids(journal)

    def free_the_disk(event: Any) -> None:
        if event_type is not None and isinstance(event, event_type):
            with sqlite3.connect(journal) as db:
                db.execute("INSERT INTO freed VALUES (1)")

    return journal, tmp_path / "out", free_the_disk


async def test_a_row_with_its_output_but_no_job_urls_is_done(
    png_data_uri: str, tmp_path: Path
) -> None:
    """A row holding the job's output and files but not the job's URLs (an older version's
    row, a journal edited by hand) is the done item it says, not a lost submit."""
    journal, out, items = tmp_path / "j", tmp_path / "out", [("a", edit(png_data_uri))]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        (first,) = await run(client, items, journal=journal, download_to=out)
        with sqlite3.connect(journal) as db:
            db.execute("UPDATE items SET status_url = NULL, response_url = NULL")
        (second,) = await run(client, items, journal=journal, download_to=out)

        assert ItemState.COMPLETED is second.state and second.resumed
        assert first.files == second.files
        assert 1 == len(emu.jobs)


async def test_a_batch_tells_of_the_journal_write_it_lost(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk19 F1: a journal write that failed mid-batch, and that no later write made good, is
    in the batch's summary (it reached no caller: the items are delivered, and a rerun may
    take them for lost submits)."""
    items = [("a", edit(png_data_uri))]
    journal, _, _ = await journal_full_until(tmp_path)
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        async with client.edit_many(items, journal=journal) as batch:
            (result,) = [r async for r in batch]

    assert ItemState.COMPLETED is result.state
    summary = batch.summary()
    assert isinstance(summary.journal_error, JournalError)
    assert "the journal failed: " in str(summary)


async def test_a_journal_write_made_good_later_is_no_alarm(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk20 N2: the 'submitted' write fails, the output's write (which names the job again)
    lands: the row is whole, so the summary reports no journal error, and a rerun pays
    nothing."""
    journal, items = await journal_refusing(tmp_path, "submitted"), [("a", edit(png_data_uri))]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        async with client.edit_many(items, journal=journal) as batch:
            (first,) = [r async for r in batch]
        (second,) = await run(client, items, journal=journal)

        assert ItemState.COMPLETED is first.state
        assert batch.summary().journal_error is None
        assert second.resumed and 1 == len(emu.jobs)


async def test_a_lost_verdict_of_a_refused_submit_is_an_alarm(
    png_data_uri: str, tmp_path: Path
) -> None:
    """fal refused the submit (422: no job), but the journal could not say so: its row still
    reads as a submit in flight, which a rerun takes for a lost answer. The batch says the
    journal failed."""
    journal, items = await journal_refusing(tmp_path, "unsent"), [("a", edit(png_data_uri))]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("submit", "server_error", status=422)
        async with client.edit_many(items, journal=journal) as batch:
            (result,) = [r async for r in batch]

    assert ItemState.FAILED is result.state
    (row,) = (await rows(journal)).values()
    assert "submitting" == row.state
    assert isinstance(batch.summary().journal_error, JournalError)


async def test_a_refused_downloaded_write_gets_a_last_try_as_the_batch_closes(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk21 F1: the 'downloaded' write is refused, and the disk frees before the batch
    ends: the last try lands, so the row knows its files (a rerun that finds fal's copy
    expired would otherwise fail the item), and nothing is reported."""
    journal, out = await journal_refusing(tmp_path, "downloaded"), tmp_path / "out"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        async with client.edit_many(
            [("a", edit(png_data_uri))], journal=journal, download_to=out
        ) as batch:
            results = []
            async for result in batch:
                results.append(result)
                with sqlite3.connect(journal) as db:  # the disk frees
                    db.execute("DROP TRIGGER full")

    (row,), (result,) = (await rows(journal)).values(), results
    assert ItemState.COMPLETED is result.state
    assert "downloaded" == row.state and [f.path for f in row.files] == [
        f.path for f in result.files
    ]
    assert batch.summary().journal_error is None


@pytest.mark.parametrize("state", ["downloaded", "failed"])
async def test_a_refused_last_word_of_an_item_is_an_alarm(
    png_data_uri: str, tmp_path: Path, state: str
) -> None:
    """atk21 F1, F3: a row left short of its files ('downloaded' refused for good), or of
    fal's verdict ('failed' refused: a rerun finding the job expired would advise paying
    again for a prompt the model refused), is reported: never a quiet success."""
    journal, out = await journal_refusing(tmp_path, state), tmp_path / "out"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        if state == "failed":
            emu.schedule_fault("job", "model_failure", error_type="validation")
        async with client.edit_many(
            [("a", edit(png_data_uri))], journal=journal, download_to=out
        ) as batch:
            (result,) = [r async for r in batch]

    expected = ItemState.COMPLETED if state == "downloaded" else ItemState.FAILED
    assert expected is result.state
    assert isinstance(batch.summary().journal_error, JournalError)


async def test_a_refused_cancel_requested_write_misleads_no_rerun(
    png_data_uri: str, tmp_path: Path
) -> None:
    """The batch is left and fal takes the cancel, but the journal refuses to say so: the
    row still reads 'submitted'. The rerun polls that job as it would a 'cancel_requested'
    row's, finds it cancelled and submits the item again at once (atk19 F4: it used to report
    it cancelled, and only a third run submitted it; atk21 F2 made that an alarm), so the
    refused write is no alarm."""
    journal = await journal_refusing(tmp_path, "cancel_requested")
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.hold_jobs()
        async with client.edit_many([("a", edit(png_data_uri))], journal=journal) as batch:
            await emu.wait_jobs_held(1)
            await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
        emu.release_jobs()

        (row,) = (await rows(journal)).values()
        with sqlite3.connect(journal) as db:
            db.execute("DROP TRIGGER full")  # the disk has room again
        (again,) = await run(client, [("a", edit(png_data_uri))], journal=journal)

    assert "submitted" == row.state and 1 == emu.counters.cancels
    assert batch.summary().journal_error is None
    assert again.ok and again.resumed and 2 == again.attempts
    assert 2 == emu.counters.submits and 1 == most_billed(emu)


async def rerun_a_paid_job_through(
    png_data_uri: str, tmp_path: Path, faults: Callable[[Emulator], None]
) -> tuple[Any, Any, Emulator]:
    """A run left while its job runs, the cancel failing, so the job finishes and bills (as
    after a SIGKILL); a rerun that re-attaches it under ``faults``; a clean third run. The
    second and third runs' results, and the emulator."""
    items = [("a", edit(png_data_uri))]
    journal = tmp_path / "j"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.hold_jobs()
        emu.schedule_fault("cancel", "server_error", times=100)  # the job lives on
        async with client.edit_many(items, journal=journal):
            await emu.wait_jobs_held(1)
        emu.clear_faults()
        emu.release_jobs()
        await emu.wait_until(lambda: emu.counters.billed >= 1)
        faults(emu)
        (second,) = await run(client, items, journal=journal)
        emu.clear_faults()
        (third,) = await run(client, items, journal=journal)
    return second, third, emu


async def test_a_proxys_499_for_a_resumed_job_submits_nothing_again(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk22 F1: the rerun re-attaches a job that finished and billed, and its result GET is
    answered a bare 499 (a proxy's "client closed request"). That is no word from fal that
    the job was cancelled: it used to be taken for one, and the item was paid for again."""

    def faults(emu: Emulator) -> None:
        emu.schedule_fault("result", "request_error", times=100)

    second, third, emu = await rerun_a_paid_job_through(png_data_uri, tmp_path, faults)

    assert ItemState.FAILED is second.state and second.resumed
    assert third.ok and third.resumed and second.request_id == third.request_id
    assert 1 == emu.counters.submits and 1 == most_billed(emu)


@pytest.mark.parametrize("routes", [("result",), ("stream", "status")])
async def test_a_proxys_404_page_for_a_resumed_job_is_not_its_expiry(
    png_data_uri: str, tmp_path: Path, routes: tuple[str, ...]
) -> None:
    """atk23 F1: the rerun re-attaches a paid job and a proxy answers a 404 that is no fal
    answer (no JSON). That is not fal forgetting the job: the item fails this run, its row
    keeps the job, and the next run fetches the output. It used to be failed for good as
    expired, and --retry-failed paid for it again."""

    def faults(emu: Emulator) -> None:
        for route in routes:
            emu.schedule_fault(route, "request_error", status=404, times=100)

    second, third, emu = await rerun_a_paid_job_through(png_data_uri, tmp_path, faults)

    assert ItemState.FAILED is second.state and second.resumed
    assert not isinstance(second.error, JobFailedError)
    assert "fal does not know it" not in str(second.error)  # the proxy's word, not fal's
    assert third.ok and third.resumed and second.request_id == third.request_id
    assert 1 == emu.counters.submits and 1 == most_billed(emu)


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        ("state", "bogus", "'bogus' is not a valid JournalState"),
        ("cost", "abc", "cost is 'abc', not an amount"),
        ("output", "{not json", "Expecting property name"),
        ("attempts", "x", "attempts is 'x', not a count"),
        ("files", '[{"path": 1}]', "DownloadedFile"),
    ],
)
async def test_a_row_damaged_by_hand_is_a_journal_error_naming_it(
    png_data_uri: str, tmp_path: Path, column: str, value: str, said: str
) -> None:
    """atk23 F4: one row edited by hand stopped every run and `journal show` with an error
    that was not ours (ValueError, InvalidOperation, JSONDecodeError, TypeError); it is a
    JournalError now, naming the row and the way out, and nothing is submitted."""
    journal = tmp_path / "j"
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        await run(client, [("a", edit(png_data_uri))], journal=journal)
        with sqlite3.connect(journal) as db:
            (key,) = db.execute("SELECT key FROM items").fetchone()
            db.execute(f"UPDATE items SET {column} = ?", (value,))
        with pytest.raises(JournalError, match="is damaged") as caught:
            await run(client, [("a", edit(png_data_uri))], journal=journal)
        async with open_journal(journal, read_only=True) as j:
            with pytest.raises(JournalError, match="is damaged"):
                await j.entries()

    assert repr(key) in str(caught.value) and said in str(caught.value)
    assert 1 == emu.counters.submits


@pytest.mark.parametrize("schema_row", [True, False], ids=["schema row kept", "and removed"])
async def test_a_journal_whose_items_table_was_dropped_is_refused(
    png_data_uri: str, tmp_path: Path, schema_row: bool
) -> None:
    """atk23 F5, atk24 F7: a journal whose ``items`` table was dropped (and its schema row
    deleted) was made anew, and every item paid for again. It is refused now: a journal is
    made in one transaction, so only a hand leaves its meta table without its items. An
    empty file (a run killed before it wrote anything) is still a new journal."""
    journal, empty = tmp_path / "j", tmp_path / "empty"
    items = [("a", edit(png_data_uri))]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        await run(client, items, journal=journal)
        with sqlite3.connect(journal) as db:
            db.execute("DROP TABLE items")
            if not schema_row:
                db.execute("DELETE FROM meta")
        with pytest.raises(JournalError, match="items table is gone"):
            await run(client, items, journal=journal)
        with pytest.raises(JournalError, match="items table is gone"):
            async with open_journal(journal, read_only=True):  # as `journal show` opens it
                pass
        empty.touch()
        (result,) = await run(client, items, journal=empty)
    assert result.ok and not result.resumed
    assert 2 == emu.counters.submits  # the first run's, and the empty journal's


@pytest.mark.parametrize("meta_too", [False, True], ids=["items", "items and meta"])
async def test_a_ledger_whose_items_table_was_dropped_is_refused_on_each_backend(
    client: AsyncClient, emulator: Emulator, png_data_uri: str, ledger: Any, meta_too: bool
) -> None:
    """A shared PostgreSQL ledger whose items table was dropped was made anew too, and every
    item paid again; so was one whose meta went with it (its webhooks table left: atk26
    F2). Both backends refuse them, before anything is sent."""
    items = [("a", edit(png_data_uri))]
    await run(client, items, journal=ledger)
    execute(ledger, "DROP TABLE {items}")
    if meta_too:
        meta = "fal_edit_meta" if isinstance(ledger, str) else "meta"
        execute(ledger, f"DROP TABLE {meta}")
    with pytest.raises(JournalError, match="table is gone"):
        await run(client, items, journal=ledger)
    assert 1 == emulator.counters.submits


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("DROP TABLE meta", "its meta table is gone"),
        ("DELETE FROM meta WHERE name = 'schema'", "its schema row is gone"),
    ],
)
async def test_a_journal_missing_its_meta_says_so(
    client: AsyncClient,
    emulator: Emulator,
    png_data_uri: str,
    tmp_path: Path,
    damage: str,
    said: str,
) -> None:
    """atk26 F3: a journal whose meta table was dropped was called "another program's
    database", with no way back; one whose schema row was deleted was taken as it stood
    (which schema its rows follow is not known then). Both are refused, saying what is gone."""
    journal = tmp_path / "j"
    items = [("a", edit(png_data_uri))]
    await run(client, items, journal=journal)
    execute(journal, damage)
    with pytest.raises(JournalError, match=said):
        await run(client, items, journal=journal)
    assert 1 == emulator.counters.submits


async def test_a_journal_parted_from_its_wal_file_is_refused(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk24 F3: after a kill -9 early in a run, every row was in the -wal file; the journal
    file copied alone (cp, mv, scp) was taken as a new journal and every item paid again.
    A file that is not empty yet holds no tables is refused now, for writing and reading."""
    import shutil

    journal, alone = tmp_path / "j", tmp_path / "moved" / "j"
    alone.parent.mkdir()
    items = [("a", edit(png_data_uri))]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        async with Journal(journal) as open_one:  # as a killed run leaves it: not checkpointed
            await run(client, items, journal=open_one)
            shutil.copy(journal, alone)
        assert alone.stat().st_size > 0
        with pytest.raises(JournalError, match="without the j-wal file beside it"):
            await run(client, items, journal=alone)
        with pytest.raises(JournalError, match="holds no journal tables"):
            async with open_journal(alone, read_only=True):
                pass
        (again,) = await run(client, items, journal=journal)  # whole where it was
    assert again.ok and again.resumed
    assert 1 == emu.counters.submits


async def test_two_rows_holding_one_job_follow_it_for_neither(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk23 F5: a journal edited so that two rows name one job (neither with its output)
    had both items follow it and take its output, the same bytes for two edits. Neither
    follows it now, nor pays for a new job: both are unknown, with a JournalError naming
    both rows; the third item, whose row is its own, is fetched."""
    journal = tmp_path / "j"
    items = [(k, edit(png_data_uri, f"prompt {k}")) for k in "abc"]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        await run(client, items, journal=journal)
        with sqlite3.connect(journal) as db:
            keys = dict(db.execute("SELECT substr(key, 1, 1), key FROM items").fetchall())
            cols = "request_id, status_url, response_url, cancel_url"
            (a_job,) = db.execute(f"SELECT {cols} FROM items WHERE key = ?", (keys["a"],))
            db.execute(
                f"UPDATE items SET ({cols}) = (?, ?, ?, ?) WHERE key = ?", (*a_job, keys["b"])
            )
            db.execute("UPDATE items SET state = 'submitted', output = NULL, files = NULL")
        results = {r.key: r for r in await run(client, items, journal=journal)}
        async with open_journal(journal, read_only=True) as j:  # what `journal show` prints
            named = (await j.summary()).jobs_named_twice
    assert {a_job[0]: (keys["a"], keys["b"])} == {r: tuple(sorted(k)) for r, k in named.items()}
    for k in "ab":
        assert ItemState.UNKNOWN is results[k].state
        assert isinstance(results[k].error, JournalError)
        assert repr(keys["a"]) in str(results[k].error) and repr(keys["b"]) in str(results[k].error)
    assert results["c"].ok and results["c"].resumed
    assert 3 == emu.counters.submits  # the first run's only
    assert 3 + 1 == emu.counters.result_fetches  # the rerun fetched c's alone


async def test_a_failed_row_naming_another_rows_job_leaves_that_row_alone(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk25 F3: a failed row given another row's job only replays its verdict, so it named
    that job "twice" with the other row, which then ended unknown, its files undelivered.
    Only rows a rerun would follow a job for count now."""
    journal = tmp_path / "j"
    items = [(k, edit(png_data_uri, f"prompt {k}")) for k in "ab"]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        await run(client, items, journal=journal, download_to=tmp_path / "one")
        with sqlite3.connect(journal) as db:
            keys = dict(db.execute("SELECT substr(key, 1, 1), key FROM items").fetchall())
            (a_id,) = db.execute("SELECT request_id FROM items WHERE key = ?", (keys["a"],))
            db.execute(
                "UPDATE items SET state = 'failed', request_id = ?, error = 'x' WHERE key = ?",
                (*a_id, keys["b"]),
            )
        results = {
            r.key: r
            for r in await run(client, items, journal=journal, download_to=tmp_path / "two")
        }
    assert results["a"].ok and (tmp_path / "two" / "a_0.png").exists()
    assert ItemState.FAILED is results["b"].state
    assert 2 == emu.counters.submits


@pytest.mark.parametrize("copy", ["whole row", "urls only, another id"])
async def test_a_row_copied_onto_another_gives_it_no_output(
    png_data_uri: str, tmp_path: Path, copy: str
) -> None:
    """atk24 F1, F2: a's row copied whole onto b's (its job and output, downloaded) gave b
    a's bytes without a look at fal; a's URLs under another id had b follow a's job. Now
    the copy is two rows naming one job (both unknown), and URLs are followed only when
    they name the row's id (b's made-up id is not on fal: no output of a's for b)."""
    journal = tmp_path / "j"
    items = [(k, edit(png_data_uri, f"prompt {k}")) for k in "ab"]
    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        await run(client, items, journal=journal, download_to=tmp_path / "one")
        with sqlite3.connect(journal) as db:
            keys = dict(db.execute("SELECT substr(key, 1, 1), key FROM items").fetchall())
            cols = ["request_id", "status_url", "response_url", "cancel_url", "output"]
            if copy != "whole row":
                cols.remove("output")
            (values,) = db.execute(
                f"SELECT {', '.join(cols)} FROM items WHERE key = ?", (keys["a"],)
            )
            values = list(values)
            if copy != "whole row":
                values[0] = "00000000-0000-4000-8000-000000000000"
                db.execute("UPDATE items SET state = 'submitted', output = NULL, files = NULL")
            sets = ", ".join(f"{c} = ?" for c in cols)
            db.execute(f"UPDATE items SET {sets} WHERE key = ?", (*values, keys["b"]))
        results = {
            r.key: r
            for r in await run(client, items, journal=journal, download_to=tmp_path / "two")
        }
        fetched = emu.counters.result_fetches

    b = results["b"]
    assert not b.ok and b.output is None and 2 == emu.counters.submits
    assert not (tmp_path / "two" / "b_0.png").exists()
    if copy == "whole row":
        assert ItemState.UNKNOWN is results["a"].state is b.state
        assert isinstance(b.error, JournalError) and 2 == fetched
    else:
        assert results["a"].ok and "result expired" in str(b.error)


async def test_an_output_whose_write_failed_is_written_again_with_its_files(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk18 F2: the 'submitted' and 'completed' writes fail (a full disk), the disk frees
    while the files download: the row ends whole, with its job, and a rerun pays nothing,
    reports the item done and writes no second copy (it used to read 'downloaded' without a
    job: unknown for good, and --resubmit-unknown paid again)."""
    items = [("a", edit(png_data_uri))]
    journal, out, free_the_disk = await journal_full_until(tmp_path, ItemCompleted)

    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        (first,) = await run(
            client, items, journal=journal, download_to=out, on_event=free_the_disk
        )
        (row,) = (await rows(journal)).values()
        (second,) = await run(client, items, journal=journal, download_to=out)

        assert ItemState.COMPLETED is first.state
        assert "downloaded" == row.state and first.request_id == row.request_id
        assert ItemState.COMPLETED is second.state and second.resumed
        assert 1 == len(emu.jobs)
        assert [f.path.name for f in first.files] == sorted(p.name for p in out.iterdir())


async def test_an_output_whose_write_failed_is_written_again_when_its_download_fails(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk19 F3: the output's write fails, then its download does too (the output folder's
    disk is full): the output is written again all the same, so the rerun downloads it from
    the journal's copy, without paying again (fal's copy of a result expires)."""
    items = [("a", edit(png_data_uri))]
    journal, out, free_the_disk = await journal_full_until(tmp_path, ItemCompleted)

    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("download", "server_error", times=1_000)
        (first,) = await run(
            client, items, journal=journal, download_to=out, on_event=free_the_disk
        )
        (row,) = (await rows(journal)).values()
        emu.clear_faults()
        (second,) = await run(client, items, journal=journal, download_to=out)

        assert ItemState.FAILED is first.state
        assert "completed" == row.state and first.request_id == row.request_id
        assert row.output is not None
        assert ItemState.COMPLETED is second.state and second.files
        assert 1 == len(emu.jobs)


async def test_an_output_whose_two_writes_failed_gets_a_last_try_as_the_batch_closes(
    png_data_uri: str, tmp_path: Path
) -> None:
    """atk20 R1: the output's write fails, its download fails, the second try fails (the
    disk is still full); the disk frees before the batch ends: the last try, as the batch
    closes, keeps the output for the rerun, and the journal is whole again."""
    items = [("a", edit(png_data_uri))]
    # ItemFailed comes after the second try.
    journal, out, free_the_disk = await journal_full_until(tmp_path, ItemFailed)

    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("download", "server_error", times=1_000)
        async with client.edit_many(
            items, journal=journal, download_to=out, on_event=free_the_disk
        ) as batch:
            (first,) = [r async for r in batch]
        (row,) = (await rows(journal)).values()
        emu.clear_faults()
        (second,) = await run(client, items, journal=journal, download_to=out)

        assert ItemState.FAILED is first.state
        assert "completed" == row.state and row.output is not None
        assert batch.summary().journal_error is None
        assert ItemState.COMPLETED is second.state and 1 == len(emu.jobs)


async def test_an_output_whose_write_failed_is_written_again_when_the_batch_is_left(
    png_data_uri: str, tmp_path: Path
) -> None:
    """The output's write fails, and the batch is left while the files download (Ctrl-C):
    the output is written on the way out all the same, for the rerun to download."""
    items = [("a", edit(png_data_uri))]
    journal, out, free_the_disk = await journal_full_until(tmp_path, ItemCompleted)

    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        emu.hold_downloads()
        async with client.edit_many(
            items, journal=journal, download_to=out, on_event=free_the_disk
        ):
            await emu.wait_downloads_held(1)  # the download is on its way
        (row,) = (await rows(journal)).values()
        emu.release_downloads()
        (second,) = await run(client, items, journal=journal, download_to=out)

        assert "completed" == row.state and row.output is not None
        assert ItemState.COMPLETED is second.state and second.files
        assert 1 == len(emu.jobs)


async def test_no_row_says_downloaded_without_the_job_it_stands_for(
    png_data_uri: str, tmp_path: Path
) -> None:
    """The disk stays full for every write that names the job: the item is delivered, and its
    row is left as the lost submit it is, never a 'downloaded' row no rerun can use. Once the
    disk frees, a rerun finds the job in fal's history: done and paid once. (Its claim never
    landed either, so the rerun writes a second copy beside the first, as docs/guarantees.md
    says of a journal that stopped taking writes; the first is never replaced.)"""
    items = [("a", edit(png_data_uri))]
    journal, out, _ = await journal_full_until(tmp_path)

    async with Emulator(fast_images=True) as emu, client_for(emu) as client:
        (first,) = await run(client, items, journal=journal, download_to=out)
        (row,) = (await rows(journal)).values()
        delivered = first.files[0].path.read_bytes()
        with sqlite3.connect(journal) as db:
            db.execute("INSERT INTO freed VALUES (1)")
        (second,) = await run(client, items, journal=journal, download_to=out)

        assert ItemState.COMPLETED is first.state and first.files
        assert "submitting" == row.state and row.request_id is None
        assert ItemState.COMPLETED is second.state
        assert first.request_id == second.request_id
        assert 1 == len(emu.jobs)
        assert delivered == first.files[0].path.read_bytes()
        assert delivered == second.files[0].path.read_bytes()


async def test_a_cancel_requested_row_that_lost_its_request_id_is_not_paid_again(
    png_data_uri: str, tmp_path: Path
) -> None:
    """The 'submitted' write fails once (a disk that fills and frees), the batch is left and fal
    takes the cancel (best effort: the job runs on and bills): the next run pays nothing."""
    journal, items = await journal_refusing(tmp_path, "submitted"), [("a", edit(png_data_uri))]
    async with Emulator(fast_images=True, cancel_running="ignore") as emu:
        emu.hold_jobs()
        async with client_for(emu) as client:
            async with client.edit_many(items, journal=journal):
                await emu.wait_jobs_held(1)
                await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
            emu.release_jobs()
            await emu.wait_completed(1)  # the cancel was ignored: billed
            with sqlite3.connect(journal) as db:
                db.execute("DROP TRIGGER full")

            await run(client, items, journal=journal)

        assert 1 == most_billed(emu)
