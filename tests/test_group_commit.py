"""Group commit: many ledger writes per transaction and per fsync, and still each paid
submit committed before its POST leaves."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from fal_edit_async import (
    AiohttpTransport,
    EditImageInput,
    Journal,
    JournalError,
    Request,
    Response,
    StreamResponse,
)
from fal_edit_async._batch._ledger import _group_commit
from fal_edit_async._batch._ledger._group_commit import GroupCommit, Operation
from fal_edit_async.emulator import Emulator

from .conftest import client_for


class Gate:
    """A ledger's two halves: ``commit`` records each batch (on the loop); ``sync`` records
    each fsync, in whichever thread it runs, and holds the first until told."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.syncs: list[tuple[bool, str]] = []
        self.release = threading.Event()
        self.fail: Exception | None = None

    def commit(self, batch: Sequence[Operation[str]]) -> None:
        self.batches.append([op.fn for op in batch])
        for op in batch:
            try:
                op.result = op.fn("connection")
            except Exception as exc:
                op.error = exc

    def sync(self, durable: bool, tidy: bool) -> bool:
        self.syncs.append((durable, threading.current_thread().name))
        if len(self.syncs) == 1:
            self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        return False


@pytest.fixture
def threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync in a worker thread (as on a disk that makes them wait)."""
    monkeypatch.setattr(_group_commit, "_SLOW_SYNCS", 0)


async def test_durable_writes_that_commit_during_an_fsync_share_the_next_one(
    threaded: None,
) -> None:
    """The first durable write's fsync is held: the ten writes asked for meanwhile commit
    together, the non-durable ones return at once, and the durable ones all wait for one
    more fsync (not one each); each caller gets its own result."""
    gate = Gate()
    group: GroupCommit[str] = GroupCommit(gate.commit, gate.sync)
    results: dict[int, str] = {}
    returned_before_release: list[int] = []
    plain_back = anyio.Event()

    async def one(i: int) -> None:
        results[i] = await group.run(lambda c: f"{c}-{i}", durable=i % 2 == 0)
        if not gate.release.is_set():
            returned_before_release.append(i)
            if len(returned_before_release) == 5:
                plain_back.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, 0)
        await anyio.wait_all_tasks_blocked()  # 0 committed, its fsync held in a thread
        for i in range(1, 11):
            tg.start_soon(one, i)
        with anyio.fail_after(5):
            await plain_back.wait()
        await anyio.wait_all_tasks_blocked()
        assert [1, 3, 5, 7, 9] == sorted(returned_before_release)
        gate.release.set()

    assert {i: f"connection-{i}" for i in range(11)} == results
    assert [1, 10] == [len(b) for b in gate.batches]
    assert (2, 2) == (group.commits, group.durable_commits)
    assert [True, True] == [durable for durable, _ in gate.syncs]
    assert all(thread != threading.current_thread().name for _, thread in gate.syncs)


async def test_fast_fsyncs_stay_on_the_loop_and_slow_ones_move_to_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An fsync that returns at once runs on the loop; after two slow ones, in threads."""
    gate = Gate()
    gate.release.set()
    group: GroupCommit[str] = GroupCommit(gate.commit, gate.sync)
    for _ in range(2):
        await group.run(lambda c: None, durable=True)
    monkeypatch.setattr(_group_commit, "_SLOW_SYNC", -1.0)  # every one is slow from now
    for _ in range(4):
        await group.run(lambda c: None, durable=True)

    loop_thread = threading.current_thread().name
    on_loop = [thread == loop_thread for _, thread in gate.syncs]
    assert [True, True, True, True, False, False] == on_loop


async def test_one_failing_operation_fails_alone() -> None:
    """An operation that raises gets its error; the others of its batch their results."""
    gate = Gate()
    gate.release.set()
    group: GroupCommit[str] = GroupCommit(gate.commit, gate.sync)
    outcomes: dict[str, object] = {}

    def bad(_: str) -> str:
        raise ValueError("this one")

    async def one(name: str, fn: Any) -> None:
        try:
            outcomes[name] = await group.run(fn, durable=True)
        except ValueError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "bad", bad)
        tg.start_soon(one, "good", lambda c: "fine")

    assert [2] == [len(b) for b in gate.batches]  # bad and good shared one commit
    assert "fine" == outcomes["good"]
    assert isinstance(outcomes["bad"], ValueError)


async def test_a_failed_fsync_fails_the_durable_writes_it_held() -> None:
    """A write that was to be durable is not reported written when its fsync failed; one
    that needed no fsync is, from the same transaction."""
    gate = Gate()
    gate.release.set()
    gate.fail = OSError(5, "Input/output error")
    group: GroupCommit[str] = GroupCommit(gate.commit, gate.sync)
    outcomes: dict[str, object] = {}

    async def one(name: str, durable: bool) -> None:
        try:
            outcomes[name] = await group.run(lambda c: name, durable=durable)
        except OSError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "paid", True)
        tg.start_soon(one, "plain", False)

    assert isinstance(outcomes["paid"], OSError)
    assert "plain" == outcomes["plain"]
    assert (1, 0) == (group.commits, group.durable_commits)


async def test_a_cancelled_caller_waits_for_its_write_to_reach_the_disk(threaded: None) -> None:
    """Ctrl-C while a durable write waits for its fsync: the write lands, and its caller
    returns only once it is on the disk (the ledger must not lie)."""
    gate = Gate()
    group: GroupCommit[str] = GroupCommit(gate.commit, gate.sync)
    landed: list[str] = []
    returned: list[tuple[str, bool]] = []

    async def write(name: str) -> None:
        try:
            await group.run(lambda c: landed.append(name), durable=True)
        finally:
            returned.append((name, gate.release.is_set()))

    writers = anyio.CancelScope()

    async def both() -> None:
        with writers:
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, "first")
                tg.start_soon(write, "second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(both)
        await anyio.wait_all_tasks_blocked()
        writers.cancel()
        await anyio.wait_all_tasks_blocked()
        assert [] == returned
        gate.release.set()

    assert ["first", "second"] == landed
    assert [("first", True), ("second", True)] == returned


async def test_a_write_after_the_loops_executor_shut_down_is_synced_on_the_loop(
    threaded: None,
) -> None:
    """Threads refused (the loop's executor shut down, as at the end of ``asyncio.run``): the
    durable write is fsynced on the loop instead of never returning."""
    gate = Gate()
    gate.release.set()
    group: GroupCommit[str] = GroupCommit(gate.commit, gate.sync)
    await asyncio.get_running_loop().shutdown_default_executor()

    with anyio.fail_after(5):
        assert "done" == await group.run(lambda c: "done", durable=True)
    assert [(True, threading.current_thread().name)] == gate.syncs


async def test_close_waits_for_the_fsync_on_its_way(threaded: None) -> None:
    """``aclose`` returns once every write asked for is committed and on the disk."""
    gate = Gate()
    group: GroupCommit[str] = GroupCommit(gate.commit, gate.sync)
    done: list[str] = []

    async def write() -> None:
        await group.run(lambda c: None, durable=True)
        done.append("write")

    async def close() -> None:
        await group.aclose()
        done.append("close")

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(close)
        await anyio.wait_all_tasks_blocked()
        assert [] == done
        gate.release.set()

    assert ["write", "close"] == done


def test_a_failed_statement_rolls_back_only_its_own_write(tmp_path: Path) -> None:
    """In the SQLite journal, a statement that fails inside a batch leaves the others'."""

    async def scenario() -> list[str]:
        async with Journal(tmp_path / "j") as journal:

            def insert(key: str) -> Any:
                return lambda db: db.execute(
                    "INSERT INTO items (key, state, updated_at) VALUES (?, 'pending', 0)", (key,)
                )

            async def attempt(key: str) -> None:
                try:
                    await journal._run(insert(key))
                except JournalError:
                    pass

            async with anyio.create_task_group() as tg:
                for key in ("a", "b", "a", "c"):  # the second "a" breaks the primary key
                    tg.start_soon(attempt, key)
        with sqlite3.connect(tmp_path / "j") as db:
            return sorted(k for (k,) in db.execute("SELECT key FROM items"))

    assert ["a", "b", "c"] == anyio.run(scenario)


class CommittedBeforePost:
    """A transport that, as each submit POST leaves, counts the journal's committed rows
    with a submit recorded (read through a connection of its own)."""

    def __init__(self, journal: Path) -> None:
        self.inner = AiohttpTransport()
        self.journal = journal
        self.posts = 0
        self.short: list[tuple[int, int]] = []

    def _recorded(self) -> int:
        with sqlite3.connect(self.journal) as db:
            (n,) = db.execute("SELECT count(*) FROM items WHERE sent_at IS NOT NULL").fetchone()
        return int(n)

    async def request(self, request: Request) -> Response:
        if request.method == "POST" and "/requests/" not in request.url:
            self.posts += 1
            recorded = self._recorded()
            if recorded < self.posts:
                self.short.append((self.posts, recorded))
        return await self.inner.request(request)

    def stream(self, request: Request) -> AbstractAsyncContextManager[StreamResponse]:
        return self.inner.stream(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_every_submit_is_committed_before_its_post_and_writes_share_fsyncs(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """64 items at once: at each POST, as many submits are committed as POSTs have left;
    and the paid writes (two per item) took fewer fsynced commits than writes."""
    path = tmp_path / "j"
    spy = CommittedBeforePost(path)
    items = [EditImageInput(prompt=f"p{i}", image_urls=[png_data_uri]) for i in range(64)]
    async with Journal(path) as journal, client_for(emulator, transport=spy) as client:
        async with client.edit_many(items, concurrency=64, journal=journal) as batch:
            results = [r async for r in batch]
        durable = journal._group.durable_commits

    assert all(r.ok for r in results)
    assert (64, []) == (spy.posts, spy.short)
    assert durable < 2 * 64


class WalFsyncs:
    """``os.fsync`` spied on: for each fsync of ``<journal>-wal``, how many rows a connection
    of its own then saw committed with a submit recorded."""

    def __init__(self, journal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wal = str(journal.resolve()) + "-wal"
        self.journal = journal
        self.seen: list[int] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            real(fd)
            if os.readlink(f"/proc/self/fd/{fd}") == self.wal:
                with sqlite3.connect(self.journal) as db:
                    query = "SELECT count(*) FROM items WHERE sent_at IS NOT NULL"
                    self.seen.append(int(db.execute(query).fetchone()[0]))

        monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("where", ["loop", "thread"])
async def test_a_paid_write_returns_only_after_an_fsync_of_the_wal_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """``record_submitting`` (written before a paid POST) returns after the WAL, with its row
    committed in it, was fsynced: what ``synchronous=FULL`` would do, whichever thread does
    it; a write that needs no fsync adds none."""
    on_loop = where == "loop"
    monkeypatch.setattr(_group_commit, *("_SLOW_SYNC", 1e9) if on_loop else ("_SLOW_SYNCS", 0))
    path = tmp_path / "j"
    spy = WalFsyncs(path, monkeypatch)
    async with Journal(path) as journal:
        for i in range(3):
            await journal.record_submitting(
                f"k{i}", endpoint="e", input={"prompt": "p"}, attempts=1, cost=Decimal(0)
            )
            assert i + 1 == spy.seen[-1]
        fsyncs = len(spy.seen)
        await journal.record_cancel_requested("k0")
        assert fsyncs == len(spy.seen)


@pytest.mark.parametrize("where", ["loop", "thread"])
async def test_the_wal_is_checkpointed_whatever_the_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Commits back to back, none durable, still get the WAL checkpointed (SQLite's own
    checkpoints are off) and started over: 1,000 of them leave a WAL of a few hundred
    pages at most, where each wrote one page or more. Also when the checkpoint runs in a
    thread, where commits beside it would keep it from ever catching up."""
    on_loop = where == "loop"
    monkeypatch.setattr(_group_commit, *("_SLOW_SYNC", 1e9) if on_loop else ("_SLOW_SYNCS", 0))
    path = tmp_path / "j"
    async with Journal(path) as journal:
        await journal.record_submitting(
            "k", endpoint="e", input={"prompt": "p"}, attempts=1, cost=Decimal(0)
        )
        for _ in range(1000):  # one commit each: each awaits the one before
            await journal.record_cancel_requested("k")
        wal = Path(str(path.resolve()) + "-wal").stat().st_size
    assert wal < 300 * 4096


def test_a_journal_goes_on_in_a_second_event_loop(tmp_path: Path) -> None:
    """A journal kept open across two event loops, the first closed with a write's commit
    still scheduled on it: the second loop's writes still commit (nothing of the first
    waits on it)."""
    journal = Journal(tmp_path / "j")

    async def first() -> None:
        await journal.open()
        await journal.record_submitting(
            "a", endpoint="e", input={"prompt": "p"}, attempts=1, cost=Decimal(0)
        )
        # Asked for as the loop stops: its commit is scheduled after the stop, never run.
        asyncio.get_running_loop().create_task(journal.record_cancel_requested("a"))

    async def second() -> str | None:
        with anyio.fail_after(5):
            await journal.record_cancel_requested("a")
            entry = await journal.get("a")
            await journal.aclose()
        return None if entry is None else entry.state.value

    loop = asyncio.new_event_loop()
    loop.run_until_complete(first())
    loop.close()  # the scheduled commit never runs there
    assert "cancel_requested" == anyio.run(second)


@pytest.mark.parametrize(("behind", "tidies"), [(False, 2), (True, 3)])
async def test_a_tidy_up_a_reader_held_back_comes_again_soon(behind: bool, tidies: int) -> None:
    """Every ``tidy_every`` commits a tidy-up (a checkpoint); one that says the WAL is still
    long (a reader kept SQLite from starting it over) is tried again 4 commits later."""
    calls: list[bool] = []

    def sync(durable: bool, tidy: bool) -> bool:
        calls.append(tidy)
        return behind

    group: GroupCommit[str] = GroupCommit(lambda batch: None, sync, tidy_every=10)
    for _ in range(20):  # one commit each
        await group.run(lambda c: None, durable=False)

    assert tidies == sum(calls)
