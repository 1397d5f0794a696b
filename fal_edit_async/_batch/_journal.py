"""A durable record of a batch, so a crash, a reboot or Ctrl-C never costs a second payment.

One SQLite file in WAL mode. Every write is committed before the batch moves on, from a
worker thread so the event loop never blocks on the disk. A row per item, keyed by the item's
key (with the input's fingerprint, so a changed prompt or option is a new row, never a stale
reuse), moves through ``submitted`` → ``completed`` → ``downloaded``, or ends ``failed`` or
``cancelled``. The request id and URLs are written as soon as the submit returns, before
anything else happens to the job; a batch run again with the same journal re-attaches to
those jobs instead of submitting them again.

``synchronous=NORMAL`` with WAL survives a crash of this process (what SIGKILL or Ctrl-C
does) at full speed; it may lose the last commits on a power loss.

What it cannot cover: a job fal accepted whose answer was lost before the journal recorded
it (the connection dropped after the POST was sent, or the process died in between). Such
an item is submitted again on the next run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import attrs

from .._converter import to_wire
from .._exceptions import FalEditError
from .._models import DownloadedFile, EditImageOutput, JobUrls

__all__ = ["Journal", "JournalEntry", "JournalState"]

T = TypeVar("T")

_SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request_id TEXT,
    endpoint TEXT,
    status_url TEXT,
    response_url TEXT,
    cancel_url TEXT,
    input TEXT,
    output TEXT,
    files TEXT,
    error TEXT,
    error_type TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cost TEXT NOT NULL DEFAULT '0',
    updated_at REAL NOT NULL
);
"""


class JournalState(StrEnum):
    """Where a journaled item stands."""

    SUBMITTED = "submitted"
    COMPLETED = "completed"
    DOWNLOADED = "downloaded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@attrs.frozen(kw_only=True)
class JournalEntry:
    """One journaled item."""

    key: str
    state: JournalState
    request_id: str | None = None
    endpoint: str | None = None
    urls: JobUrls | None = None
    input: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    output: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    files: tuple[DownloadedFile, ...] = ()
    error: str | None = None
    error_type: str | None = None
    attempts: int = 0
    cost: Decimal = Decimal(0)
    updated_at: float = 0.0


def _entry(row: sqlite3.Row) -> JournalEntry:
    urls = None
    if row["request_id"] and row["status_url"]:
        urls = JobUrls(
            request_id=row["request_id"],
            status_url=row["status_url"],
            response_url=row["response_url"],
            cancel_url=row["cancel_url"],
        )
    files = tuple(
        DownloadedFile(
            path=Path(f["path"]), size=f["size"], sha256=f["sha256"], content_type=f["content_type"]
        )
        for f in json.loads(row["files"] or "[]")
    )
    return JournalEntry(
        key=row["key"],
        state=JournalState(row["state"]),
        request_id=row["request_id"],
        endpoint=row["endpoint"],
        urls=urls,
        input=json.loads(row["input"]) if row["input"] else None,
        output=json.loads(row["output"]) if row["output"] else None,
        files=files,
        error=row["error"],
        error_type=row["error_type"],
        attempts=row["attempts"],
        cost=Decimal(row["cost"]),
        updated_at=row["updated_at"],
    )


class Journal:
    """A batch journal in one SQLite file; pass it (or a path) as ``edit_many(journal=...)``.

    Usage::

        async with Journal("restyle.journal") as journal:
            for entry in await journal.entries():
                print(entry.key, entry.state, entry.request_id)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        # One connection, used from worker threads one call at a time.
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open (creating if needed) the journal file; harmless when already open."""
        if self._closed:
            raise RuntimeError("this journal is closed")
        if self._db is None:
            self._db = await anyio.to_thread.run_sync(self._connect)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        found = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if found is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        elif found["value"] != _SCHEMA_VERSION:
            db.close()
            raise RuntimeError(f"{self.path}: journal schema {found['value']} is not supported")
        return db

    async def aclose(self) -> None:
        """Close the file; harmless to call twice."""
        db, self._db = self._db, None
        self._closed = True
        if db is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(db.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            await self.open()
        db = self._db
        assert db is not None

        def locked() -> T:
            with self._lock:
                return fn(db)

        # Shielded: a write that was asked for must land, or the journal would lie after Ctrl-C.
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(locked)
        return result

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, if any."""

        def read(db: sqlite3.Connection) -> JournalEntry | None:
            row = db.execute("SELECT * FROM items WHERE key = ?", (key,)).fetchone()
            return _entry(row) if row else None

        return await self._run(read)

    async def entries(self) -> list[JournalEntry]:
        """Every entry, oldest change first."""

        def read(db: sqlite3.Connection) -> list[JournalEntry]:
            rows = db.execute("SELECT * FROM items ORDER BY updated_at").fetchall()
            return [_entry(r) for r in rows]

        return await self._run(read)

    async def _upsert(self, key: str, **values: Any) -> None:
        values["updated_at"] = time.time()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        sql = (
            f"INSERT INTO items (key, {columns}) VALUES (?, {marks}) "
            f"ON CONFLICT(key) DO UPDATE SET {updates}"
        )
        params = (key, *values.values())
        await self._run(lambda db: db.execute(sql, params))

    async def record_submitted(
        self,
        key: str,
        urls: JobUrls,
        *,
        endpoint: str,
        input: Mapping[str, Any],
        attempts: int,
        cost: Decimal,
    ) -> None:
        """fal accepted a job for ``key``: keep its id and URLs before anything else."""
        await self._upsert(
            key,
            state=JournalState.SUBMITTED.value,
            request_id=urls.request_id,
            endpoint=endpoint,
            status_url=urls.status_url,
            response_url=urls.response_url,
            cancel_url=urls.cancel_url,
            input=json.dumps(input),
            attempts=attempts,
            cost=str(cost),
            error=None,
            error_type=None,
        )

    async def record_completed(self, key: str, output: EditImageOutput) -> None:
        """The job finished and its output is known."""
        await self._upsert(
            key, state=JournalState.COMPLETED.value, output=json.dumps(to_wire(output))
        )

    async def record_downloaded(self, key: str, files: Sequence[DownloadedFile]) -> None:
        """Every output file is on disk and verified."""
        listing = [
            {
                "path": str(f.path),
                "size": f.size,
                "sha256": f.sha256,
                "content_type": f.content_type,
            }
            for f in files
        ]
        await self._upsert(key, state=JournalState.DOWNLOADED.value, files=json.dumps(listing))

    async def record_failed(self, key: str, error: FalEditError) -> None:
        """The item failed for good (its error is kept, never the key)."""
        await self._upsert(
            key,
            state=JournalState.FAILED.value,
            error=str(error),
            error_type=getattr(error, "error_type", None) or type(error).__name__,
        )

    async def record_cancelled(self, key: str) -> None:
        """The item's job was cancelled (Ctrl-C, a deadline); a new run submits it again."""
        await self._upsert(key, state=JournalState.CANCELLED.value)
