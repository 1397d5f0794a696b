"""Reconciling lost submits: the decision rule, and each fate against the emulator's history
and signed webhooks (never sleeping: time passing is a row's ``sent_at`` moved back)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    ItemState,
    ItemSubmitted,
    JobFailedError,
    JobUrls,
    Journal,
    JournalState,
    PostgresJournal,
    ReconcilePolicy,
    Resolution,
    UnknownSubmitError,
    WebhookEvent,
    WebhookTag,
)
from fal_edit_async._batch._reconcile import Evidence, LostSubmit, decide
from fal_edit_async._history import HistoryItem
from fal_edit_async.emulator import Emulator
from fal_edit_async.webhooks import STATISTICS, JwksCache, ReceiverStatistics, create_app

from .conftest import client_for

POLICY = ReconcilePolicy(start_timeout=10, longest_run=20, settle=5)
SENT = 1_800_000_000.0
BOUND = SENT + 35


def _row(**overrides: Any) -> LostSubmit:
    values: dict[str, Any] = {
        "key": "k",
        "endpoint": "fal-ai/gpt-image-1/edit-image",
        "attempt": 1,
        "sent_at": SENT,
        "start_timeout": 10.0,
        "body": {"prompt": "p", "image_urls": ["https://x/a.png"]},
    }
    return LostSubmit(**{**values, **overrides})


def _match(request_id: str) -> HistoryItem:
    return HistoryItem(
        request_id=request_id,
        endpoint_id="fal-ai/gpt-image-1/edit-image",
        sent_at=datetime.fromtimestamp(SENT, UTC),
    )


def _event(request_id: str) -> WebhookEvent:
    tag = WebhookTag(batch="b", item="k", attempt=1)
    return WebhookEvent(
        request_id=request_id,
        gateway_request_id=request_id,
        user_id="u",
        timestamp=0,
        status="OK",
        tag=tag,
    )


# -- the rule ----------------------------------------------------------------------------


def test_a_webhook_record_decides_first() -> None:
    """A tagged webhook names the job, whatever the history shows."""
    evidence = Evidence(webhooks=(_event("w"),), matches=(_match("a"), _match("b")))
    fate = decide(_row(), evidence, POLICY)
    assert (Resolution.RESOLVED, "w") == (fate.resolution, fate.request_id)


def test_one_exact_match_is_adopted_even_before_the_bound() -> None:
    evidence = Evidence(matches=(_match("a"),), complete=False, walked_at=SENT)
    fate = decide(_row(), evidence, POLICY)
    assert (Resolution.ADOPTED, "a") == (fate.resolution, fate.request_id)


def test_two_matches_are_ambiguous_after_the_bound_too() -> None:
    evidence = Evidence(matches=(_match("a"), _match("b")), complete=True, walked_at=BOUND + 1)
    fate = decide(_row(), evidence, POLICY)
    assert Resolution.AMBIGUOUS is fate.resolution
    assert ("a", "b") == fate.candidates


def test_no_match_is_resubmittable_only_after_the_bound_in_a_complete_walk() -> None:
    """The bound is sent_at + start timeout + longest run + settle, compared with when the
    walk began; an incomplete walk or a strict policy never makes an item resubmittable."""
    row = _row()
    at = {
        t: decide(row, Evidence(complete=True, walked_at=t), POLICY) for t in (BOUND - 0.01, BOUND)
    }
    assert Resolution.UNKNOWN is at[BOUND - 0.01].resolution
    assert BOUND == at[BOUND - 0.01].bound
    assert Resolution.RESUBMITTABLE is at[BOUND].resolution
    late = BOUND + 1000
    assert Resolution.UNKNOWN is decide(row, Evidence(walked_at=late), POLICY).resolution
    strict = ReconcilePolicy(start_timeout=10, longest_run=20, settle=5, strict=True)
    done = Evidence(complete=True, walked_at=late)
    assert Resolution.UNKNOWN is decide(row, done, strict).resolution


@pytest.mark.parametrize(
    "row", [_row(start_timeout=None), _row(body=None), _row(sent_at=None)], ids=str
)
def test_a_row_without_a_bound_or_a_body_stays_unknown(row: LostSubmit) -> None:
    fate = decide(row, Evidence(complete=True, walked_at=BOUND + 1000), POLICY)
    assert Resolution.UNKNOWN is fate.resolution


@pytest.mark.parametrize("found", [1, 2])
def test_a_match_another_unsettled_row_may_own_is_neither_adopted_nor_ambiguous(
    found: int,
) -> None:
    """Another row sent this body and holds no job yet: any match may be its, so the row
    stays unknown (ambiguous would be for ever), even after the bound."""
    matches = tuple(_match(f"m{i}") for i in range(found))
    evidence = Evidence(matches=matches, complete=True, walked_at=BOUND + 1, contested=("o",))
    fate = decide(_row(), evidence, POLICY)
    assert (Resolution.UNKNOWN, None) == (fate.resolution, fate.request_id)
    assert "o sent this body too" in (fate.reason or "")


def test_a_job_the_error_named_that_fal_still_knows_is_resolved() -> None:
    fate = decide(_row(request_id="n"), Evidence(named_alive=True), POLICY)
    assert (Resolution.RESOLVED, "n") == (fate.resolution, fate.request_id)


def test_the_policy_refuses_what_fal_refuses() -> None:
    with pytest.raises(ValueError, match="above 1 second"):
        ReconcilePolicy(start_timeout=1)
    with pytest.raises(ValueError, match="finite"):
        ReconcilePolicy(settle=float("inf"))


# -- against the emulator ---------------------------------------------------------------


def _edit(uri: str, prompt: str = "make it blue") -> EditImageInput:
    return EditImageInput(prompt=prompt, image_urls=[uri])


async def _run(client: AsyncClient, items: Any, **options: Any) -> tuple[list[Any], Any]:
    async with client.edit_many(items, **options) as batch:
        return [r async for r in batch], batch


def _age(journal: Path, seconds: float) -> None:
    """Move every row's send time back: the bound passes without waiting."""
    with sqlite3.connect(journal) as db:
        db.execute("UPDATE items SET sent_at = sent_at - ?", (seconds,))


async def _lose_one(
    emu: Emulator, client: AsyncClient, journal: Path, uri: str, queued: bool
) -> Any:
    emu.schedule_fault("submit", "connection_reset", after_enqueue=queued)
    (first,), _ = await _run(client, [("a", _edit(uri))], journal=journal, reconcile=POLICY)
    assert ItemState.UNKNOWN is first.state
    return first


async def test_a_lost_answer_whose_job_was_queued_is_adopted(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The job fal queued is found by the exact body sent, and followed: one job, paid once."""
    journal = tmp_path / "j"
    await _lose_one(emulator, client, journal, png_data_uri, queued=True)
    (again,), batch = await _run(client, [("a", _edit(png_data_uri))], journal=journal)
    assert again.ok, again.error
    assert {Resolution.ADOPTED: 1} == {k: v for k, v in batch.reconciled.counts.items() if v}
    assert 1 == emulator.counters.submits
    assert [1] == list(emulator.counters.billed_by_input.values())


async def test_a_lost_answer_with_no_job_is_resubmitted_only_after_the_bound(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    journal, items = tmp_path / "j", [("a", _edit(png_data_uri))]
    await _lose_one(emulator, client, journal, png_data_uri, queued=False)
    (early,), batch = await _run(client, items, journal=journal, reconcile=POLICY)
    assert ItemState.UNKNOWN is early.state
    (row,) = batch.reconciled.rows
    assert Resolution.UNKNOWN is row.resolution and row.bound is not None
    assert 0 == emulator.counters.submits

    _age(journal, 36)
    (late,), batch = await _run(client, items, journal=journal, reconcile=POLICY)
    assert late.ok, late.error
    assert Resolution.RESUBMITTABLE is batch.reconciled.rows[0].resolution
    assert 1 == emulator.counters.submits


async def test_strict_never_resubmits(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    journal, items = tmp_path / "j", [("a", _edit(png_data_uri))]
    await _lose_one(emulator, client, journal, png_data_uri, queued=False)
    _age(journal, 10_000)
    strict = ReconcilePolicy(start_timeout=10, longest_run=20, settle=5, strict=True)
    (again,), _ = await _run(client, items, journal=journal, reconcile=strict)
    assert ItemState.UNKNOWN is again.state
    assert 0 == emulator.counters.submits


async def test_a_history_that_hides_inputs_proves_nothing(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    journal, items = tmp_path / "j", [("a", _edit(png_data_uri))]
    await _lose_one(emulator, client, journal, png_data_uri, queued=False)
    await _run(client, [("other", _edit(png_data_uri, "other"))], journal=tmp_path / "k")
    _age(journal, 10_000)
    emulator.schedule_fault("history", "history_no_payloads", times=100)
    (again,), batch = await _run(client, items, journal=journal, reconcile=POLICY)
    assert ItemState.UNKNOWN is again.state
    assert not batch.reconciled.history_complete
    assert 1 == emulator.counters.submits  # only the other batch's


async def test_two_jobs_with_the_body_sent_are_ambiguous_and_never_resubmitted(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A lost answer whose body two jobs carry: reported, never a third job, even when
    unknown items are asked to be resubmitted."""
    journal, items = tmp_path / "j", [("a", _edit(png_data_uri))]
    await _lose_one(emulator, client, journal, png_data_uri, queued=True)
    async with Journal(journal, read_only=True) as j:
        (entry,) = await j.entries()
    assert entry.sent_body is not None
    await client.submit(EditImageInput(**_fields(entry.sent_body)))  # the same body again

    (again,), batch = await _run(client, items, journal=journal, resubmit_unknown=True)
    assert ItemState.UNKNOWN is again.state
    assert Resolution.AMBIGUOUS is batch.reconciled.rows[0].resolution
    assert 2 == len(batch.reconciled.rows[0].candidates)
    (again,), _ = await _run(client, items, journal=journal, resubmit_unknown=True)
    assert ItemState.UNKNOWN is again.state
    assert 2 == emulator.counters.submits
    async with Journal(journal, read_only=True) as j:
        assert JournalState.AMBIGUOUS is (await j.entries())[0].state


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in body.items()}


async def test_fal_edit_reconcile_without_a_batch(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """``client.reconcile`` settles the rows alone: the adopted job completes from the
    history's output once fal's queue forgot it; the next run pays nothing."""
    journal = tmp_path / "j"
    first = await _lose_one(emulator, client, journal, png_data_uri, queued=True)
    await emulator.wait_completed(1)
    emulator.expire_all_results()
    report = await client.reconcile(journal, policy=POLICY)
    assert [Resolution.ADOPTED] == [r.resolution for r in report.rows]
    async with Journal(journal, read_only=True) as j:
        (entry,) = await j.entries()
    assert JournalState.COMPLETED is entry.state and entry.output is not None
    (again,), _ = await _run(client, [("a", _edit(png_data_uri))], journal=journal)
    assert again.ok and again.request_id == report.rows[0].request_id
    assert first.request_id is None
    assert 1 == emulator.counters.submits


# -- webhook-tracked batches ------------------------------------------------------------


@asynccontextmanager
async def _receiver(
    emu: Emulator, journal: Journal
) -> AsyncIterator[tuple[str, ReceiverStatistics]]:
    jwks = JwksCache(emu.jwks_url)
    app = create_app(jwks=jwks, sink=journal, path="/hook")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", app[STATISTICS]
    finally:
        await runner.cleanup()
        await jwks.aclose()


async def test_a_webhook_tracked_batch_opens_no_status_stream(
    png_data_uri: str, tmp_path: Path
) -> None:
    """Each job ends by its signed webhook, recorded once in the ledger, even when fal
    delivers it twice; no status stream, no status poll."""
    items = [(f"i{n}", _edit(png_data_uri, f"p{n}")) for n in range(4)]
    async with Emulator(workers=4, fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("webhook", "webhook_duplicate")
        async with Journal(tmp_path / "j") as journal, _receiver(emu, journal) as (url, stats):
            results, _ = await _run(client, items, journal=journal, webhook_url=url)
            await emu.wait_until(lambda: emu.counters.webhook_posts["duplicate"] == 1)
            recorded = await journal.webhooks()
        assert all(r.ok for r in results), [r.error for r in results]
        assert 0 == emu.counters.streams_opened
        assert 0 == emu.counters.status_polls
        assert 4 == len(recorded) == stats.accepted and 1 == stats.duplicates
        assert {r.key for r in results} == {e.tag.item.split("@")[0] for e in recorded if e.tag}


async def test_a_tracked_lost_answer_is_found_by_its_tagged_webhook(
    png_data_uri: str, tmp_path: Path
) -> None:
    """The answer is lost after the job was queued; its webhook, tagged with the item and
    attempt, names the job in the same run: followed, not paid for twice."""
    async with Emulator(workers=2, fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("submit", "connection_reset", after_enqueue=True)
        async with Journal(tmp_path / "j") as journal, _receiver(emu, journal) as (url, _):
            (result,), _ = await _run(
                client, [("a", _edit(png_data_uri))], journal=journal, webhook_url=url
            )
        assert result.ok, result.error
        assert 1 == emu.counters.submits
        assert 0 == emu.counters.streams_opened


async def test_a_tracked_failure_with_a_lagging_status_is_no_cancel(
    png_data_uri: str, tmp_path: Path
) -> None:
    """The webhook says the job failed, the status GET does not yet say it ended, and a
    proxy answers the result GET with bare 499s: the item is not reported cancelled (which
    has the rerun pay for it again), since nothing said fal cancelled it."""
    async with Emulator(workers=2, fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("job", "model_failure", error_type="validation")
        emu.schedule_fault("status", "unknown_status")
        emu.schedule_fault("result", "request_error", times=100)
        async with Journal(tmp_path / "j") as journal, _receiver(emu, journal) as (url, _):
            items = [("a", _edit(png_data_uri))]
            (first,), _ = await _run(client, items, journal=journal, webhook_url=url)
            assert ItemState.CANCELLED is not first.state, first.error
            assert ItemState.FAILED is first.state
            emu.clear_faults()
            (again,), _ = await _run(client, items, journal=journal, webhook_url=url)
        assert (ItemState.FAILED, True) == (again.state, again.resumed)
        assert isinstance(again.error, JobFailedError)  # fal's verdict, read from the result
        assert 1 == emu.counters.submits


@pytest.mark.parametrize("given", ["object", "path"])
async def test_closing_the_client_under_a_tracked_batch_cancels_its_jobs(
    png_data_uri: str, tmp_path: Path, given: str
) -> None:
    """atk24 F4: closed under a webhook-tracked batch, the client sent no cancel (the wait
    reads the journal, not the client): the job ran on and billed. It is cancelled on fal
    now, as a followed job is, and the item ends on the closed client. atk25 F2: with a
    journal the batch opened from a path, the batch then closed it under the close hook
    that records fal's answer: aclose() raised ExceptionGroup[RuntimeError], the row stayed
    'submitted'. The batch waits for the hooks before it closes its journal."""
    submitted = anyio.Event()

    def on_event(event: Any) -> None:
        if isinstance(event, ItemSubmitted):
            submitted.set()  # the item goes on to wait for its webhook, without a yield

    path = tmp_path / "j"
    async with Emulator(workers=2, fast_images=True) as emu:
        emu.hold_jobs()
        client = client_for(emu)
        results: list[Any] = []
        async with client, Journal(tmp_path / "j") as journal, _receiver(emu, journal) as (url, _):
            ledger = journal if given == "object" else tmp_path / "own"
            with anyio.fail_after(30):  # a hang backstop, not a measurement
                async with anyio.create_task_group() as tg:

                    async def batch() -> None:
                        items = [("a", _edit(png_data_uri))]
                        ran, _ = await _run(
                            client, items, journal=ledger, webhook_url=url, on_event=on_event
                        )
                        results.extend(ran)

                    tg.start_soon(batch)
                    if given == "object":
                        await submitted.wait()
                    else:  # closed as the submit's answer comes back: its own close hook
                        await emu.wait_in_flight(1)
                    await client.aclose()
        emu.release_jobs()
        await emu.wait_until(lambda: emu.counters.in_flight == 0)
    (result,) = results
    assert 1 == emu.counters.cancels and 0 == emu.counters.billed
    assert not result.ok and "closed" in str(result.error)
    with sqlite3.connect(path if given == "object" else tmp_path / "own") as db:
        assert [("cancel_requested",)] == db.execute("SELECT state FROM items").fetchall()


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "still running"])
async def test_a_tracked_rerun_follows_an_earlier_runs_job_itself(
    png_data_uri: str, tmp_path: Path, finished: bool
) -> None:
    """atk26 F5, atk27 F2: a tracked run stopped with its job in flight, whose webhook then
    went nowhere (that run's receiver was gone), left the rerun waiting for it until the
    start-timeout bound (over 5 minutes) though the job had finished, or finished later. A
    job an earlier run submitted, with no webhook recorded, is followed as an untracked
    one is: a status GET, and the status stream while it runs."""
    items = [("a", _edit(png_data_uri))]
    async with Emulator(workers=2, fast_images=True) as emu, client_for(emu) as client:
        async with Journal(tmp_path / "j") as journal:
            emu.hold_jobs()
            with anyio.fail_after(30):  # a hang backstop, not a measurement
                async with anyio.create_task_group() as tg:

                    async def first() -> None:
                        await _run(
                            client, items, journal=journal, webhook_url="http://127.0.0.1:9/"
                        )

                    tg.start_soon(first)
                    await emu.wait_in_flight(1)
                    emu.schedule_fault("cancel", "request_error", status=503, times=100)
                    tg.cancel_scope.cancel()  # the run stops; its cancel is not answered
            emu.clear_faults()
            if finished:
                emu.release_jobs()
                await emu.wait_completed(1)
            results: list[Any] = []
            async with _receiver(emu, journal) as (url, _):
                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:

                        async def again() -> None:
                            results.extend(
                                (await _run(client, items, journal=journal, webhook_url=url))[0]
                            )

                        tg.start_soon(again)
                        if not finished:
                            await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
                            emu.release_jobs()
    (result,) = results
    assert result.ok and result.resumed, result.error
    assert 1 == emu.counters.submits and 1 == emu.counters.status_polls
    assert (0 if finished else 1) == emu.counters.streams_opened


async def test_a_forged_or_replayed_delivery_records_nothing(
    png_data_uri: str, tmp_path: Path
) -> None:
    async with Emulator(workers=2, fast_images=True) as emu, client_for(emu) as client:
        emu.schedule_fault("webhook", "webhook_tampered")
        emu.schedule_fault("webhook", "webhook_stale")
        async with Journal(tmp_path / "j") as journal, _receiver(emu, journal) as (url, stats):
            (result,), _ = await _run(
                client, [("a", _edit(png_data_uri))], journal=journal, webhook_url=url
            )
            (event,) = await journal.webhooks()
        assert result.ok
        assert "OK" == event.status and "attacker" not in str(event.payload)
        assert 1 == stats.rejected["WebhookUnverifiedError"]
        assert 1 == stats.rejected["WebhookTimestampError"]


async def test_another_items_job_is_never_adopted(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Two repeats of one input send one body: the lost one never takes the job the other
    item holds, though the history lists it with exactly that body."""
    journal, items = tmp_path / "j", [_edit(png_data_uri), _edit(png_data_uri)]
    emulator.schedule_fault("submit", "connection_reset", after_enqueue=False)
    first, _ = await _run(client, items, journal=journal, concurrency=1, reconcile=POLICY)
    assert [ItemState.COMPLETED, ItemState.UNKNOWN] == sorted(r.state for r in first)
    (early,) = [
        r
        for r in (await _run(client, items, journal=journal, reconcile=POLICY))[0]
        if r.state is not ItemState.COMPLETED
    ]
    assert ItemState.UNKNOWN is early.state
    _age(journal, 36)
    again, _ = await _run(client, items, journal=journal, reconcile=POLICY)
    assert all(r.ok for r in again)
    assert 2 == len({r.request_id for r in again}) == emulator.counters.submits


def test_fal_edit_reconcile_prints_what_it_settled(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    png_data_uri: str,
    tmp_path: Path,
) -> None:
    """``fal-edit reconcile JOURNAL`` adopts the lost submit's job and says so, as JSON too;
    a second run finds nothing left to settle."""
    import anyio

    from fal_edit_async._cli import main

    from .test_cli_support import emulator_thread

    journal = tmp_path / "j"
    with emulator_thread(monkeypatch) as (_, emu):
        monkeypatch.setenv("FAL_API_URL", emu.rest_url)

        async def lose() -> None:
            async with client_for(emu) as client:
                await _lose_one(emu, client, journal, png_data_uri, queued=True)

        anyio.run(lose)
        assert 0 == main(["reconcile", str(journal), "--json"])
        report = json.loads(capsys.readouterr().out)
        assert 1 == report["counts"]["adopted"]
        assert 0 == main(["reconcile", str(journal)])
        assert "0 unknown item(s) reconciled" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_both_ledgers_keep_a_webhook_once(backend: str, tmp_path: Path) -> None:
    """Either backend records a request id's first delivery only, finds it by its tag, and
    keeps the tags' secret and batch name across openings."""
    from fal_edit_async import PostgresJournal

    from ._postgres import fresh_schema, server

    async def check(make: Any) -> None:
        async with make() as ledger:
            secret, batch = await ledger.webhook_secret(), await ledger.batch_id()
            assert [True, False] == [await ledger.record_webhook(_event("r")) for _ in "ab"]
            assert ["r"] == [e.request_id for e in await ledger.tagged_webhooks("k", 1)]
        async with make() as ledger:
            assert (secret, batch) == (await ledger.webhook_secret(), await ledger.batch_id())
            assert 1 == len(await ledger.webhooks())

    if backend == "sqlite":
        await check(lambda: Journal(tmp_path / "j"))
        return
    server()
    with fresh_schema() as dsn:
        await check(lambda: PostgresJournal(dsn))


# -- a row that moves on while it is reconciled ----------------------------------------------


def _meddling(spec: Any, meddle: Any) -> Any:
    """The ledger at ``spec`` (a file or an address) on its backend, whose first
    ``webhooks()`` read (a pass makes it after reading the rows, before the walk) lets
    ``meddle`` write first: what a live worker does meanwhile."""
    base: Any = PostgresJournal if isinstance(spec, str) else Journal

    class Meddling(base):  # type: ignore[misc, valid-type]
        meddled = False

        async def webhooks(self) -> list[WebhookEvent]:
            if not self.meddled:
                self.meddled = True
                await meddle(self)
            events: list[WebhookEvent] = await super().webhooks()
            return events

    return Meddling(spec)


@pytest.mark.parametrize("then", ["settled_elsewhere", "resubmitted", "lost_again"])
async def test_a_fate_never_lands_on_a_row_that_moved_on_meanwhile(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, ledger: Any, then: str
) -> None:
    """A lost answer whose job J fal queued: a pass reads the unknown row, and before it
    writes J, a worker sends the item again (asked to resubmit unknown items) and records
    fal's answer, or loses that answer too (the row is unknown again, of a later send); or
    another pass settles the row first (a webhook tagged it with another job). The pass's fate
    was decided for the old row: it writes nothing, and says so."""
    emulator.schedule_fault("submit", "connection_reset", after_enqueue=True)
    (first,), _ = await _run(client, [("a", _edit(png_data_uri))], journal=ledger)
    assert ItemState.UNKNOWN is first.state
    other = JobUrls(
        request_id="another-send",
        status_url="http://127.0.0.1:1/status",
        response_url="http://127.0.0.1:1/response",
        cancel_url="http://127.0.0.1:1/cancel",
    )
    sent_again: list[float | None] = []

    async def resend(journal: Any) -> None:
        (entry,) = await journal.entries()
        if then == "settled_elsewhere":  # same send, so only the state tells it moved on
            sent_again.append(entry.sent_at)
            await journal.record_submitted(entry.key, other, attempts=entry.attempts)
            return
        await journal.claim(entry.key)
        await journal.record_submitting(
            entry.key,
            endpoint=entry.endpoint,
            input=entry.input,
            attempts=entry.attempts + 1,
            cost=entry.cost,
            sent_body=entry.sent_body,
            start_timeout=entry.start_timeout,
        )
        sent_again.append((await journal.get(entry.key)).sent_at)
        if then == "resubmitted":
            await journal.record_submitted(entry.key, other, attempts=entry.attempts + 1)
        else:
            await journal.record_unknown(entry.key, UnknownSubmitError("lost again"))
        await journal.release(entry.key)

    journal = _meddling(ledger, resend)
    async with journal:
        report = await client.reconcile(journal)
        (entry,) = await journal.entries()
    (fate,) = report.rows
    assert Resolution.UNKNOWN is fate.resolution
    assert "changed while it was reconciled" in (fate.reason or "")
    assert [entry.sent_at] == sent_again != [None]
    if then != "lost_again":
        assert (JournalState.SUBMITTED, "another-send") == (entry.state, entry.request_id)
    else:
        assert (JournalState.UNKNOWN, None) == (entry.state, entry.request_id)
    assert 1 == emulator.counters.submits


async def test_two_passes_at_once_never_give_one_job_to_two_rows(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, ledger: Any
) -> None:
    """Two repeats of one input lose their answers; fal queued one of the two (job J). Two
    passes run at once and order the rows differently: the other pass gives J to the second
    row just after this pass read the ledger again, and this one decides J for the first.
    The adoption is checked and written atomically: one row holds J, the other is left."""
    body = _edit(png_data_uri)
    emulator.schedule_fault("submit", "connection_reset", after_enqueue=True)
    emulator.schedule_fault("submit", "connection_reset", after_enqueue=False)
    first, _ = await _run(client, [body, body], journal=ledger, concurrency=1, reconcile=POLICY)
    assert [ItemState.UNKNOWN] * 2 == [r.state for r in first]
    (job,) = emulator.jobs
    urls = JobUrls(
        request_id=job,
        status_url="http://127.0.0.1:1/status",
        response_url="http://127.0.0.1:1/response",
        cancel_url="http://127.0.0.1:1/cancel",
    )
    base: Any = PostgresJournal if isinstance(ledger, str) else Journal
    adopted_elsewhere: list[str] = []

    class OtherPassBetween(base):  # type: ignore[misc, valid-type]
        reads = 0

        async def entries(self) -> list[Any]:
            read: list[Any] = await super().entries()
            self.reads += 1
            if self.reads == 2:  # the pass's read after its walk: the other pass writes now
                lost = [e for e in read if e.state is JournalState.UNKNOWN]
                assert await self.reconcile_submitted(lost[-1], urls)
                adopted_elsewhere.append(lost[-1].key)
            return read

    async with OtherPassBetween(ledger) as journal:
        report = await client.reconcile(journal, policy=POLICY)
        entries = await journal.entries()
    holders = [e.key for e in entries if e.request_id == job]
    assert adopted_elsewhere == holders
    fates = {r.key: r for r in report.rows}
    (mine,) = [f for k, f in fates.items() if k not in holders]
    assert Resolution.UNKNOWN is mine.resolution
    assert 1 == emulator.counters.submits
