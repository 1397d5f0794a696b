"""A PostgreSQL ledger that many workers share: claims, leases, the global cap, and workers
that die (SIGKILL) with jobs in flight.

Every test counts what fal would bill (the emulator's ``billed_by_input``) and what was
submitted. They need the PostgreSQL server ``.ci/run`` starts (``tests/_postgres.py``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
from anyio.streams.text import TextReceiveStream

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    JournalState,
    PostgresJournal,
    estimate_cost,
)
from fal_edit_async._batch._ledger import LeaseLost
from fal_edit_async._cli import main
from fal_edit_async.emulator import Emulator

from ._postgres import execute
from .conftest import client_for
from .journal_worker import _png

WORKER = Path(__file__).with_name("journal_worker.py")


def items_for(uri: str, n: int) -> list[tuple[str, EditImageInput]]:
    """``n`` keyed items editing the test image."""
    return [(f"k{i}", EditImageInput(prompt=f"pixel art #{i}", image_urls=[uri])) for i in range(n)]


async def run(client: AsyncClient, items: Any, **options: Any) -> list[Any]:
    """Run a batch to its end; its results in order of arrival."""
    async with client.edit_many(items, **options) as batch:
        return [r async for r in batch]


def most_billed(emu: Emulator) -> int:
    """The most jobs fal billed for any one input (1 is the promise)."""
    return max(emu.counters.billed_by_input.values(), default=0)


async def key_of(dsn: str, prefix: str) -> str:
    """The ledger key of the row whose key starts with ``prefix``."""
    async with PostgresJournal(dsn, read_only=True) as j:
        (key,) = [e.key for e in await j.entries() if e.key.startswith(prefix)]
    return key


# -- work sharing ----------------------------------------------------------------------------


async def test_two_workers_given_the_same_items_pay_once_and_both_report_all(
    png_data_uri: str, postgres_ledger: str
) -> None:
    """Two batches at once on one ledger: each item is one job, and each batch ends with
    every item (its own, and the other's as they finish)."""
    items = items_for(png_data_uri, 16)
    results: dict[str, list[Any]] = {}
    async with Emulator(workers=16, fast_images=True, processing_time=0.02) as emu:
        async with client_for(emu) as first, client_for(emu) as second:

            async def worker(name: str, client: AsyncClient) -> None:
                results[name] = await run(client, items, journal=postgres_ledger, concurrency=4)

            async with anyio.create_task_group() as tg:
                tg.start_soon(worker, "a", first)
                tg.start_soon(worker, "b", second)

        assert (16, 1) == (emu.counters.submits, most_billed(emu))
    assert all(r.ok for r in results["a"] + results["b"])
    assert 16 == len({r.key for r in results["a"]}) == len({r.key for r in results["b"]})
    resumed = sum(r.resumed for r in results["a"] + results["b"])
    assert resumed >= 16  # each item was worked by one batch and seen done by the other


async def test_the_global_cap_holds_across_workers(png_data_uri: str, postgres_ledger: str) -> None:
    """Three workers of concurrency 4 under max_in_flight=2: fal never runs more than 2."""
    items = items_for(png_data_uri, 18)
    async with Emulator(workers=16, fast_images=True, processing_time=0.03) as emu:
        async with client_for(emu) as a, client_for(emu) as b, client_for(emu) as c:
            async with anyio.create_task_group() as tg:
                for client in (a, b, c):
                    tg.start_soon(
                        lambda cl: run(cl, items, journal=postgres_ledger, max_in_flight=2), client
                    )
        assert 18 == emu.counters.submits
        assert emu.counters.peak_in_flight <= 2


async def test_without_a_cap_the_same_workers_exceed_it(
    png_data_uri: str, postgres_ledger: str
) -> None:
    """The counterpart of the cap test: uncapped, these workers do run more than 2 at once
    (so the cap test would catch a cap that does nothing)."""
    items = items_for(png_data_uri, 18)
    async with Emulator(workers=16, fast_images=True, processing_time=0.03) as emu:
        async with client_for(emu) as a, client_for(emu) as b, client_for(emu) as c:
            async with anyio.create_task_group() as tg:
                for client in (a, b, c):
                    tg.start_soon(lambda cl: run(cl, items, journal=postgres_ledger), client)
        assert emu.counters.peak_in_flight > 2


# -- leases ----------------------------------------------------------------------------------


async def test_an_item_a_live_worker_holds_is_left_to_it(postgres_ledger: str) -> None:
    """A claim on an item another worker holds says who; once its lease expires, it is ours."""
    async with (
        PostgresJournal(postgres_ledger, worker="one") as one,
        PostgresJournal(postgres_ledger, worker="two") as two,
    ):
        assert (await one.claim("k")).held_by is None
        assert "one" == (await two.claim("k")).held_by
        assert set() == await two.claimable(["k"])
        execute(postgres_ledger, "UPDATE {items} SET lease_until = now() - interval '1 s'")
        assert {"k"} == await two.claimable(["k"])
        assert (await two.claim("k")).held_by is None


async def test_a_worker_that_lost_its_lease_sends_no_submit(postgres_ledger: str) -> None:
    """Lease expired, item taken over: the old holder's paid write is refused (LeaseLost)."""
    async with (
        PostgresJournal(postgres_ledger, worker="one") as one,
        PostgresJournal(postgres_ledger, worker="two") as two,
    ):
        await one.claim("k")
        execute(postgres_ledger, "UPDATE {items} SET lease_until = now() - interval '1 s'")
        await two.claim("k")
        with pytest.raises(LeaseLost):
            await one.record_submitting(
                "k", endpoint="e", input={}, attempts=1, cost=estimate_cost(_edit()).usd
            )
        await two.record_submitting(
            "k", endpoint="e", input={}, attempts=1, cost=estimate_cost(_edit()).usd
        )
        assert JournalState.SUBMITTING is (await one.get("k") or _none()).state


async def test_renewing_pushes_back_the_expiry(postgres_ledger: str) -> None:
    """renew() moves every lease of the worker later, in one statement; release frees one."""
    async with PostgresJournal(postgres_ledger, worker="one", lease=60) as one:
        await one.claim("a")
        await one.claim("b")
        execute(postgres_ledger, "UPDATE {items} SET lease_until = now() - interval '1 s'")
        assert 2 == await one.renew()
        async with PostgresJournal(postgres_ledger, worker="two") as two:
            assert set() == await two.claimable(["a", "b"])
            await one.release("a")
            assert {"a"} == await two.claimable(["a", "b"])


async def test_claimable_skips_rows_another_transaction_locks(postgres_ledger: str) -> None:
    """SELECT … FOR UPDATE SKIP LOCKED: a row being claimed elsewhere is skipped, not waited on."""
    async with PostgresJournal(postgres_ledger, worker="one") as one:
        await one.claim("a")
        await one.claim("b")
        await one.release("a")
        await one.release("b")
        with psycopg.connect(postgres_ledger) as other:  # holds a row lock until it ends
            other.execute("SELECT 1 FROM fal_edit_items WHERE key = 'a' FOR UPDATE")
            with anyio.fail_after(5):
                assert {"b"} == await one.claimable(["a", "b"])


async def test_a_row_taken_over_mid_submit_is_unknown_and_not_paid(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, postgres_ledger: str
) -> None:
    """A worker died between the submitting write and fal's answer: the next one reports the
    item unknown and submits nothing."""
    items = items_for(png_data_uri, 1)
    await run(client, items, journal=postgres_ledger)
    key = await key_of(postgres_ledger, "k0@")
    execute(
        postgres_ledger,
        "UPDATE {items} SET state = 'submitting', request_id = NULL, status_url = NULL, "
        "holder = 'dead', lease_until = now() - interval '1 s'",
    )

    (result,) = await run(client, items, journal=postgres_ledger)

    assert "unknown" == result.state.value
    assert 1 == emulator.counters.submits
    async with PostgresJournal(postgres_ledger, read_only=True) as j:
        assert [key] == [e.key for e in (await j.summary()).unknown]
        assert JournalState.UNKNOWN is (await j.get(key) or _none()).state  # as stored


async def test_a_dead_workers_job_is_re_attached_by_its_request_id(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, postgres_ledger: str, tmp_path: Path
) -> None:
    """A worker died after fal's answer (row submitted, lease expired): the next worker
    follows that job to its end and downloads it; nothing is submitted again."""
    items = items_for(png_data_uri, 1)
    emulator.hold_jobs()
    # The cancel sent as the batch is left fails, so the job lives on, as after a SIGKILL
    # (a job fal confirmed cancelled would be submitted again).
    emulator.schedule_fault("cancel", "server_error", times=100)
    async with PostgresJournal(postgres_ledger, worker="dead") as dead:
        async with client.edit_many(items, journal=dead):
            await emulator.wait_jobs_held(1)
        # Left early; make the row what a SIGKILL leaves.
    execute(
        postgres_ledger,
        "UPDATE {items} SET state = 'submitted', holder = 'dead', "
        "lease_until = now() - interval '1 s'",
    )
    emulator.clear_faults()
    emulator.release_jobs()

    (result,) = await run(client, items, journal=postgres_ledger, download_to=tmp_path / "o")

    assert "completed" == result.state.value and result.resumed
    assert 1 == emulator.counters.submits


# -- durability ------------------------------------------------------------------------------


async def test_the_paid_writes_commit_with_synchronous_commit_on(
    client: AsyncClient, png_data_uri: str, postgres_ledger: str
) -> None:
    """submitting and submitted commit durably (synchronous_commit = on); the rest do not."""
    seen: list[str] = []
    async with PostgresJournal(postgres_ledger) as journal:
        journal._trace = seen.append
        await run(client, items_for(png_data_uri, 1), journal=journal)
    writes = [s for s in seen if s.split()[0] in ("INSERT", "UPDATE", "DURABLE")]
    durable = [s.startswith("DURABLE") for s in writes]
    assert "INSERT" in writes[0] and "pending" in writes[0]  # the claim
    assert [False, True, True, False] == durable[:4]  # claim, submitting, submitted, completed


# -- watching from any host ------------------------------------------------------------------


async def test_journal_show_reads_a_postgres_ledger(
    postgres_ledger: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fal-edit journal show postgresql://…` prints the counts and the live workers."""
    async with PostgresJournal(postgres_ledger, worker="host-a:1") as j:
        await j.claim("k")
        # The command runs its own event loop: in a thread, as from another shell.
        assert 0 == await anyio.to_thread.run_sync(main, ["journal", "show", postgres_ledger])
        show_json = ["journal", "show", postgres_ledger, "--json"]
        assert 0 == await anyio.to_thread.run_sync(main, show_json)
    out = capsys.readouterr().out
    assert "1 pending" in " ".join(out.split())
    assert "host-a:1: 1 items" in out
    assert '"workers": {"host-a:1": 1}' in out
    assert "password" not in out


# -- SIGKILL ---------------------------------------------------------------------------------


async def test_a_sigkilled_worker_s_items_are_finished_by_another_paying_once(
    postgres_ledger: str, tmp_path: Path
) -> None:
    """A worker process killed with jobs on fal: another worker, once the dead one's leases
    expire, re-attaches to those jobs and finishes every item; no input is billed twice."""
    n = 8
    async with Emulator(workers=8, fast_images=True) as emu:
        emu.hold_jobs()
        env = {**os.environ, "LEASE": "0.5"}
        command = [sys.executable, str(WORKER), emu.queue_url, emu.api_key, postgres_ledger]
        command += [str(tmp_path / "out"), str(n), "4", "4"]
        async with await anyio.open_process(command, env=env) as doomed:
            # Killed once fal's answers for 4 jobs are in the ledger (it prints each as it
            # lands); a kill between a POST and its answer's commit leaves an unknown row.
            assert doomed.stdout is not None
            lines = TextReceiveStream(doomed.stdout)
            seen = ""
            while seen.count("submitted") < 4:
                seen += await lines.receive()
            await emu.wait_jobs_held(4)
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        emu.release_jobs()
        async with client_for(emu) as client, PostgresJournal(postgres_ledger, lease=0.5) as j:
            results = await run(
                client,
                [
                    (f"item{i:04d}", EditImageInput(prompt=f"pixel art #{i}", image_urls=[_png()]))
                    for i in range(n)
                ],
                journal=j,
                download_to=tmp_path / "out",
            )
        assert n == emu.counters.submits
        assert 1 == most_billed(emu)
    assert n == sum(r.ok for r in results), [(r.state, r.error) for r in results if not r.ok]
    assert n == len(list((tmp_path / "out").glob("*.png")))


def _edit() -> EditImageInput:
    return EditImageInput(prompt="p", image_urls=["https://example.com/a.png"])


def _none() -> Any:
    raise AssertionError("no row")
