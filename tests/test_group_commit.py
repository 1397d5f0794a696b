"""Group commit: many ledger writes per transaction and per fsync, and still each paid
submit committed before its POST leaves."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio

from fal_edit_async import (
    AiohttpTransport,
    EditImageInput,
    Journal,
    JournalError,
    Request,
    Response,
    StreamResponse,
)
from fal_edit_async._batch._ledger._group_commit import GroupCommit, Operation
from fal_edit_async.emulator import Emulator

from .conftest import client_for


class Gate:
    """A commit that holds its first batch until told, and records every batch."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.release = threading.Event()

    def commit(self, batch: Sequence[Operation[str]]) -> None:
        if not self.batches:
            self.release.wait(10)
        self.batches.append([op.fn for op in batch])
        for op in batch:
            try:
                op.result = op.fn("connection")
            except Exception as exc:
                op.error = exc


async def test_what_arrives_during_a_commit_goes_into_the_next_one() -> None:
    """One leader commits the first write; the ten that queued behind it share one commit,
    and each caller gets its own result."""
    gate = Gate()
    group: GroupCommit[str] = GroupCommit(gate.commit)
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = await group.run(lambda c: f"{c}-{i}", durable=i == 3)

    async with anyio.create_task_group() as tg:
        for i in range(11):
            tg.start_soon(one, i)
        await anyio.wait_all_tasks_blocked()
        gate.release.set()

    assert {i: f"connection-{i}" for i in range(11)} == results
    assert [1, 10] == [len(b) for b in gate.batches]
    assert (2, 1) == (group.commits, group.durable_commits)


async def test_one_failing_operation_fails_alone() -> None:
    """An operation that raises gets its error; the other of its batch its result."""
    gate = Gate()
    group: GroupCommit[str] = GroupCommit(gate.commit)
    outcomes: dict[str, object] = {}

    def bad(_: str) -> str:
        raise ValueError("this one")

    async def one(name: str, fn: Any) -> None:
        try:
            outcomes[name] = await group.run(fn, durable=False)
        except ValueError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "leader", lambda c: "first")
        await anyio.wait_all_tasks_blocked()  # the leader's commit is held at the gate
        tg.start_soon(one, "bad", bad)
        tg.start_soon(one, "good", lambda c: "fine")
        await anyio.wait_all_tasks_blocked()
        gate.release.set()

    assert [1, 2] == [len(b) for b in gate.batches]  # bad and good shared one commit
    assert ("first", "fine") == (outcomes["leader"], outcomes["good"])
    assert isinstance(outcomes["bad"], ValueError)


async def test_a_cancelled_caller_still_gets_its_write_committed() -> None:
    """Ctrl-C while a write waits for its batch: the write lands (the ledger must not lie)."""
    gate = Gate()
    group: GroupCommit[str] = GroupCommit(gate.commit)
    landed: list[str] = []

    async def write(name: str) -> None:
        await group.run(lambda c: landed.append(name), durable=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, "first")
        tg.start_soon(write, "second")
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
        gate.release.set()

    assert ["first", "second"] == landed


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
