"""Attacks on "never pays twice" and "nothing lost" for journaled batches (atk-ledger).

Each test is a bug an attacker found, written failing (``xfail(strict=True)``) and unmarked
by its fix; all four are fixed. Counting is the emulator's (``billed``, ``submits``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from fal_edit_async import (
    EditImageInput,
    ItemState,
    Journal,
    JournalState,
    PostgresJournal,
    Resolution,
    estimate_cost,
)
from fal_edit_async._models import JobUrls
from fal_edit_async.emulator import Emulator

from .conftest import client_for

pytestmark = pytest.mark.anyio


def _edit(uri: str, prompt: str) -> EditImageInput:
    return EditImageInput(prompt=prompt, image_urls=[uri])


# -- the global cap of a shared ledger -------------------------------------------------------


async def test_a_job_that_could_not_be_followed_does_not_hold_a_cap_slot_for_ever(
    png_data_uri: str, postgres_ledger: str
) -> None:
    """max_in_flight=1, two items. The first job's result GET answers 5xx past the retries, so
    that item ends FAILED (its row, rightly, stays ``submitted`` for a re-run to re-attach).
    But nothing of this batch will ever move that row on again, and the cap counts it: the
    second item waits in ``record_submitting`` for ever and the batch never ends.

    (The same happens with ``cancel_requested`` rows left by a Ctrl-C, or rows of items that
    are not in this worker's manifest: whatever no live worker is following.)
    """
    items = [(f"k{i}", _edit(png_data_uri, f"p{i}")) for i in range(2)]
    results = []
    async with Emulator(workers=4, fast_images=True) as emu:
        emu.schedule_fault("result", "server_error", times=4)  # FAST_RETRY: 4 attempts
        async with client_for(emu) as client:
            # A guard only: without the bug the batch ends in well under a second.
            with anyio.move_on_after(5):
                async with client.edit_many(
                    items, journal=postgres_ledger, max_in_flight=1, concurrency=1
                ) as batch:
                    async for result in batch:
                        results.append(result)
        assert 2 == emu.counters.submits
    assert {"k0", "k1"} == {r.key for r in results}
    async with PostgresJournal(postgres_ledger, read_only=True) as journal:
        states = {e.key.split("@")[0]: e.state for e in await journal.entries()}
    assert JournalState.PENDING is not states["k1"]


# -- the budget across resumes ---------------------------------------------------------------


async def test_a_rerun_counts_a_lost_answers_job_against_the_budget(
    png_data_uri: str, tmp_path: Path
) -> None:
    """Budget for one job. Run 1 submits item a; fal queues (and bills) it, but the answer is
    lost, so the row is ``unknown`` (the history does not list the job yet, so reconciling
    cannot settle it). Run 2, same journal and budget, adds item b: ``Runner.preload`` counts
    only rows with a request id, so a's job counts as nothing spent and b is paid too: two
    billed jobs on a one-job budget. ``journal show``'s cost leaves a's job out likewise.

    The same drop happens to a row that had jobs before: ``record_submitting`` clears the
    request id, so an item that failed twice, then was retried (``--retry-failed``) and lost
    its answer, counts 0 instead of its earlier attempts.
    """
    journal = tmp_path / "j"
    a, b = ("a", _edit(png_data_uri, "a")), ("b", _edit(png_data_uri, "b"))
    budget = float(estimate_cost(a[1]).usd)
    async with Emulator(workers=4, fast_images=True, history_lag=3600) as emu:
        async with client_for(emu) as client:
            emu.schedule_fault("submit", "connection_reset", after_enqueue=True)
            async with client.edit_many([a], journal=journal, budget=budget) as batch:
                (first,) = [r async for r in batch]
            assert ItemState.UNKNOWN is first.state
            await emu.wait_until(lambda: emu.counters.completed >= 1)  # a's job ran: billed

            async with client.edit_many([a, b], journal=journal, budget=budget) as batch:
                second = {r.key: r.state async for r in batch}
            async with Journal(journal, read_only=True) as j:
                shown = (await j.summary()).estimated_cost
        assert ItemState.NOT_SUBMITTED is second["b"]
        assert 1 == emu.counters.billed
    assert shown >= estimate_cost(a[1]).usd


# -- odd journal names -----------------------------------------------------------------------


async def test_a_journal_named_like_another_journals_lock_file_survives(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """``--journal batch.lock`` for one batch and ``--journal batch`` for another: opening
    ``batch`` writes its holder line ("pid N") over ``batch.lock`` with ``write_text``, which
    truncates the other batch's SQLite journal: every row is gone, and its next run refuses
    the file (a user who then deletes it pays for everything again). The holder note should
    never replace a file that is not its own (O_EXCL/O_NOFOLLOW, or a name no journal takes).
    """
    item = ("a", _edit(png_data_uri, "a"))
    async with client_for(emulator) as client:
        async with client.edit_many([item], journal=tmp_path / "batch.lock") as batch:
            assert [True] == [r.ok async for r in batch]
        async with Journal(tmp_path / "batch"):
            pass  # another batch's journal, opened (and closed) once
        async with Journal(tmp_path / "batch.lock", read_only=True) as journal:
            assert 1 == len(await journal.entries())


# -- reconciling a shared ledger while its workers run ---------------------------------------


class _AnswerHeld(PostgresJournal):
    """A worker's ledger whose ``submitted`` write for one key waits for ``go`` (fal has
    answered; the commit is on its way), saying so on ``held``."""

    def __init__(self, dsn: str, prefix: str, held: anyio.Event, go: anyio.Event) -> None:
        super().__init__(dsn)
        self.prefix, self.held, self.go = prefix, held, go

    async def record_submitted(self, key: str, urls: JobUrls, *, attempts: int) -> None:
        if key.startswith(self.prefix):
            self.held.set()
            await self.go.wait()
        await super().record_submitted(key, urls, attempts=attempts)


async def test_reconciling_beside_a_live_worker_never_gives_one_job_to_two_items(
    png_data_uri: str, postgres_ledger: str
) -> None:
    """Two items with one body (keys x1, x2: two variants of one edit). x1's first submit
    was lost before fal queued it (``unknown``, no job). Worker 1 submits x2; fal answers
    with job J, and the ``submitted`` write is on its way. A second worker starting now
    reconciles the ledger: the history holds exactly one request with x1's body (J), and
    no row holds J yet (``owners`` was read before, and x2's row is still ``submitting``),
    so J is adopted for x1. Both items end with J's output: one job for two items, and x1's
    own edit is never made (the owners check should also skip bodies of rows in flight, or
    re-read the ledger under the claim before adopting).

    Fixed: the pass reads the ledger again after its walk, and a match whose body another
    row is still ``submitting`` is not adopted: x1 stays ``unknown`` for a later pass.
    """
    body = _edit(png_data_uri, "one prompt for two variants")
    x1, x2 = ("x1", body), ("x2", body)
    async with Emulator(workers=4, fast_images=True) as emu:
        async with client_for(emu) as first, client_for(emu) as second:
            emu.schedule_fault("submit", "connection_reset", after_enqueue=False)
            async with first.edit_many([x1], journal=postgres_ledger) as batch:
                assert [ItemState.UNKNOWN] == [r.state async for r in batch]
            assert 0 == emu.counters.submits

            held, go = anyio.Event(), anyio.Event()
            worker = _AnswerHeld(postgres_ledger, "x2@", held, go)
            results: list[Any] = []

            async def worker_one() -> None:
                async with first.edit_many([x1, x2], journal=worker) as batch:
                    results.extend([r async for r in batch])

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(worker_one)
                    await held.wait()
                    report = await second.reconcile(postgres_ledger)
                    go.set()
            finally:
                await worker.aclose()
            (fate,) = report.rows
            assert Resolution.UNKNOWN is fate.resolution  # x2's row may own J: not adopted
            assert "x2@" in (fate.reason or "")

            # x1 was never given J, so it is still unknown; asked to, a run submits it again
            # and it gets its own job (with the bug it held J and was not submitted).
            async with first.edit_many(
                [x1, x2], journal=postgres_ledger, resubmit_unknown=True
            ) as batch:
                final = {r.key: r async for r in batch}
        assert final["x1"].request_id != final["x2"].request_id
        assert 2 == emu.counters.submits
