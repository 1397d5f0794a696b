"""The batch ledger: a durable record of every item, so nothing is paid for twice or lost.

One SQLite file in WAL mode, written by one process at a time (an exclusive ``flock`` on
``<journal>.lock``, released by the kernel however the process ends). A row per item, keyed by
its content (see ``_items.item_key``), moves through states that only fal's answers move on::

    (none) ─► submitting ─► submitted ─► completed ─► downloaded
                  │             │  ▲
                  │             ▼  │ (fal answered the cancel with "requested": the job may
                  │      cancel_requested     still finish; a resume polls it)
                  ▼             │
               unknown          ▼
                           cancelled (fal confirmed) · failed (fal's verdict) · unsent

``submitting`` is written durably (fsync) *before* the submit POST, and ``submitted`` with the
request id durably as soon as fal answers. A row still ``submitting`` when the journal is
opened belongs to a run that died between the two: fal may or may not have queued its job,
so it becomes ``unknown``, is reported, and is submitted again only when asked
(``resubmit_unknown``). ``unsent`` means the last submit provably created no job (fal refused
it, or the connection never opened): the next run submits it. Other writes use
``synchronous=NORMAL``, which survives a crash of this process but maybe not a power cut.

The remaining gap: a job whose submit answer was lost (``unknown``) may have run and billed;
only fal's request history can tell.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.to_thread
import attrs

from .._converter import parse, to_wire
from .._exceptions import FalEditError, JournalError, JournalLockedError
from .._models import DownloadedFile, EditImageOutput, JobUrls

__all__ = ["Journal", "JournalEntry", "JournalState", "JournalSummary"]

_LOST_ANSWER = (
    "a run stopped after sending this submit and before fal's answer was recorded: fal may "
    "have queued (and billed) that job"
)

T = TypeVar("T")

_SCHEMA_VERSION = "2"
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
    updated_at REAL NOT NULL,
    sent_at REAL,
    folder TEXT,
    stem TEXT
);
"""
#: Columns added by schema 2, for journals written by schema 1.
_ADDED_COLUMNS = {"sent_at": "REAL", "folder": "TEXT", "stem": "TEXT"}


class JournalState(StrEnum):
    """Where a journaled item stands (see the module docstring for the transitions)."""

    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    CANCEL_REQUESTED = "cancel_requested"
    COMPLETED = "completed"
    DOWNLOADED = "downloaded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNSENT = "unsent"
    UNKNOWN = "unknown"

    @property
    def has_job(self) -> bool:
        """True when a job fal accepted (or may have) stands behind the row."""
        return self in _WITH_JOB


_WITH_JOB = frozenset(
    {
        JournalState.SUBMITTED,
        JournalState.CANCEL_REQUESTED,
        JournalState.COMPLETED,
        JournalState.DOWNLOADED,
    }
)


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
    sent_at: float | None = None
    #: The folder and the name stem this item's outputs were claimed under, before writing.
    folder: str | None = None
    stem: str | None = None


@attrs.frozen(kw_only=True)
class JournalSummary:
    """What a journal holds: counts by state, the cost of the jobs fal accepted, and the items
    that need a person (``unknown`` and ``failed``, with their reasons)."""

    path: Path
    counts: Mapping[JournalState, int]
    estimated_cost: Decimal
    unknown: tuple[JournalEntry, ...]
    failed: tuple[JournalEntry, ...]

    @property
    def total(self) -> int:
        """Every item the journal knows."""
        return sum(self.counts.values())


def _entry(row: sqlite3.Row) -> JournalEntry:
    urls = None
    if row["request_id"] and row["status_url"]:
        urls = JobUrls(
            request_id=row["request_id"],
            status_url=row["status_url"],
            response_url=row["response_url"],
            cancel_url=row["cancel_url"],
        )
    files = tuple(parse(f, DownloadedFile) for f in json.loads(row["files"] or "[]"))
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
        sent_at=_column(row, "sent_at"),  # schema 1 lacks these
        folder=_column(row, "folder"),
        stem=_column(row, "stem"),
    )


def _column(row: sqlite3.Row, name: str) -> Any:
    return row[name] if name in row.keys() else None


class Journal:
    """A batch ledger in one SQLite file; pass it (or a path) as ``edit_many(journal=...)``.

    Only one process may have a journal open for writing: a second one gets
    :class:`JournalLockedError` from :meth:`open`. ``read_only=True`` opens it for looking
    (``fal-edit journal show``) while a batch runs.

    Usage::

        async with Journal("restyle.journal", read_only=True) as journal:
            print(await journal.summary())
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._lock_file: int | None = None
        # One connection, used from worker threads one call at a time.
        self._lock = threading.Lock()
        self._closed = False
        self._writer_alive = False
        #: Written by schema 1, so rows may be keyed as its command line keyed them.
        self.has_legacy_keys = False

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
        """Open (creating if needed) the journal file; harmless when already open.

        Raises:
            JournalLockedError: another process has this journal open for writing.
            JournalError: the file cannot be created, read or understood.
        """
        if self._closed:
            raise RuntimeError("this journal is closed")
        if self._db is None:
            self._db = await anyio.to_thread.run_sync(self._connect)

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                return self._connect_read_only()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            # The real path: a symlink and its target are one journal with one WAL.
            db = sqlite3.connect(self.path.resolve(), check_same_thread=False, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(db)
            # Only this process writes: a row left mid-submit is a dead run's.
            db.execute(
                "UPDATE items SET state = ?, error = ? WHERE state = ?",
                (JournalState.UNKNOWN.value, _LOST_ANSWER, JournalState.SUBMITTING.value),
            )
            return db
        except (sqlite3.Error, OSError) as exc:
            self._release_lock()
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc

    def _connect_read_only(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise JournalError(f"{self.path}: no such journal")
        # Asked before SQLite opens it: closing any descriptor of a file drops this process's
        # fcntl() locks on it, SQLite's included.
        self._writer_alive = self._has_writer()
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # A folder we cannot write (no -shm): read the file as it is on disk.
            db = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
        db.row_factory = sqlite3.Row
        return db

    def _has_writer(self) -> bool:
        """True when a process holds this journal for writing (read-only opens only ask)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # also drops the lock, if it was taken
        return False

    def _migrate(self, db: sqlite3.Connection) -> None:
        tables = {
            r["name"] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if tables and "meta" not in tables:
            raise sqlite3.DatabaseError("not a fal-edit journal (another program's database)")
        db.executescript(_SCHEMA)
        found = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if found is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            return
        have = {r["name"] for r in db.execute("PRAGMA table_info(items)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                db.execute(f"ALTER TABLE items ADD COLUMN {column} {kind}")
        if found["value"] == "1":
            # Schema 1 wrote "cancelled" for every job in flight when a batch was left,
            # whatever fal answered: ask fal again before paying for those items.
            db.execute(
                "UPDATE items SET state = ? WHERE state = ? AND request_id IS NOT NULL",
                (JournalState.CANCEL_REQUESTED.value, JournalState.CANCELLED.value),
            )
            db.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (_SCHEMA_VERSION,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('legacy_keys', '1')")
        elif found["value"] != _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"journal schema {found['value']} is not supported")
        self.has_legacy_keys = (
            db.execute("SELECT 1 FROM meta WHERE name = 'legacy_keys'").fetchone() is not None
        )

    def _take_lock(self) -> None:
        # The lock is on the database file itself (its inode): every spelling of the path, a
        # symlink or a hard link to it, and a deleted lock file all meet the same lock.
        # SQLite's own locks are fcntl() locks, which flock() does not touch.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalLockedError(self.path, self._holder()) from None
        self._lock_file = fd
        with contextlib.suppress(OSError):  # who holds it, for the next one's message
            self._holder_path().write_text(f"pid {os.getpid()}\n")

    def _holder_path(self) -> Path:
        return self.path.resolve().with_name(self.path.resolve().name + ".lock")

    def _holder(self) -> str:
        try:
            return self._holder_path().read_text().strip() or "another process"
        except OSError:
            return "another process"

    def _release_lock(self) -> None:
        fd, self._lock_file = self._lock_file, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the flock

    async def aclose(self) -> None:
        """Close the file and release the lock; harmless to call twice."""
        db, self._db = self._db, None
        self._closed = True
        with anyio.CancelScope(shield=True):
            if db is not None:
                await anyio.to_thread.run_sync(db.close)
            self._release_lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        if self._db is None:
            await self.open()
        db = self._db
        assert db is not None

        def locked() -> T:
            with self._lock:
                if not durable:
                    return fn(db)
                # Two fsyncs per paid submit (before the POST, after the answer): FULL syncs.
                db.execute("PRAGMA synchronous=FULL")
                try:
                    return fn(db)
                finally:
                    db.execute("PRAGMA synchronous=NORMAL")

        # Shielded: a write that was asked for must land, or the journal would lie after Ctrl-C.
        with anyio.CancelScope(shield=True):
            try:
                result = await anyio.to_thread.run_sync(locked)
            except (sqlite3.Error, OSError) as exc:
                raise JournalError(f"{self.path}: {exc}") from exc
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

    async def summary(self) -> JournalSummary:
        """Counts by state, the cost of accepted jobs, and the items that need attention."""
        entries = await self.entries()
        if self.read_only and not self._writer_alive:
            # Nobody is writing: a row still mid-submit belongs to a run that died there.
            entries = [
                attrs.evolve(e, state=JournalState.UNKNOWN, error=e.error or _LOST_ANSWER)
                if e.state is JournalState.SUBMITTING
                else e
                for e in entries
            ]
        counts = Counter(e.state for e in entries)
        cost = sum((e.cost * e.attempts for e in entries if e.request_id), Decimal(0))
        return JournalSummary(
            path=self.path,
            counts=dict(counts),
            estimated_cost=cost,
            unknown=tuple(e for e in entries if e.state is JournalState.UNKNOWN),
            failed=tuple(e for e in entries if e.state is JournalState.FAILED),
        )

    async def _upsert(self, key: str, *, durable: bool = False, **values: Any) -> None:
        if self.read_only:
            raise JournalError(f"{self.path}: opened read-only")
        values["updated_at"] = time.time()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        sql = (
            f"INSERT INTO items (key, {columns}) VALUES (?, {marks}) "
            f"ON CONFLICT(key) DO UPDATE SET {updates}"
        )
        params = (key, *values.values())
        await self._run(lambda db: db.execute(sql, params), durable=durable)

    async def record_submitting(
        self,
        key: str,
        *,
        endpoint: str,
        input: Mapping[str, Any],
        attempts: int,
        cost: Decimal,
    ) -> None:
        """A submit for ``key`` is about to be sent: durably, before the POST."""
        await self._upsert(
            key,
            durable=True,
            state=JournalState.SUBMITTING.value,
            endpoint=endpoint,
            input=json.dumps(input),
            attempts=attempts,
            cost=str(cost),
            sent_at=time.time(),
            # The previous attempt's job (failed, or cancelled) is not this submit's.
            request_id=None,
            status_url=None,
            response_url=None,
            cancel_url=None,
            error=None,
            error_type=None,
        )

    async def record_submitted(self, key: str, urls: JobUrls, *, attempts: int) -> None:
        """fal accepted a job for ``key``: its id and URLs, durably, before anything else."""
        await self._upsert(
            key,
            durable=True,
            state=JournalState.SUBMITTED.value,
            request_id=urls.request_id,
            status_url=urls.status_url,
            response_url=urls.response_url,
            cancel_url=urls.cancel_url,
            attempts=attempts,
            output=None,
            files=None,
            error=None,
            error_type=None,
        )

    async def record_unsent(self, key: str, error: FalEditError | None = None) -> None:
        """The submit provably created no job: fal refused it, it never left, or the run
        ended while it waited out a refusal (no ``error`` then)."""
        reason = _error(error) if error else {"error": "stopped before any submit was taken"}
        await self._upsert(key, state=JournalState.UNSENT.value, **reason)

    async def record_unknown(
        self, key: str, error: FalEditError, *, urls: JobUrls | None = None
    ) -> None:
        """The submit's answer was lost: fal may have queued that job (``urls`` when fal's
        error answer named it, so a resume can ask fal about it)."""
        job: dict[str, Any] = {}
        if urls is not None:
            job = {
                "request_id": urls.request_id,
                "status_url": urls.status_url,
                "response_url": urls.response_url,
                "cancel_url": urls.cancel_url,
            }
        await self._upsert(
            key, durable=True, state=JournalState.UNKNOWN.value, **job, **_error(error)
        )

    async def record_cancel_requested(self, key: str) -> None:
        """fal took the cancel, but a running job may still finish: a resume polls it."""
        await self._upsert(key, state=JournalState.CANCEL_REQUESTED.value)

    async def record_completed(self, key: str, urls: JobUrls, output: EditImageOutput) -> None:
        """The job finished and its output is known (kept: fal's copy expires).

        The job's id is written again: had the ``submitted`` write failed (a full disk that
        then freed), this row still names its job.
        """
        await self._upsert(
            key,
            state=JournalState.COMPLETED.value,
            request_id=urls.request_id,
            status_url=urls.status_url,
            response_url=urls.response_url,
            cancel_url=urls.cancel_url,
            output=json.dumps(to_wire(output)),
        )

    async def legacy_row(self, fingerprint: str, taken: set[str]) -> JournalEntry | None:
        """A schema-1 row for this content under a name (``<name>@<fingerprint>``, as the
        command line keyed items then), not yet claimed by another item of this run.

        Only a journal migrated from schema 1 is searched: the scan is per new item.
        """
        if not self.has_legacy_keys:
            return None

        def read(db: sqlite3.Connection) -> list[JournalEntry]:
            rows = db.execute(
                "SELECT * FROM items WHERE key LIKE ? ESCAPE '\\' ORDER BY key",
                ("%@" + fingerprint.replace("%", "\\%").replace("_", "\\_"),),
            ).fetchall()
            return [_entry(r) for r in rows]

        return next((e for e in await self._run(read) if e.key not in taken), None)

    async def record_name(self, key: str, folder: str, stem: str) -> None:
        """The name this item's outputs get in ``folder`` (absolute), claimed before any is
        written, so a later run finishes them under that name instead of leaving a half set."""
        sql = "UPDATE items SET folder = ?, stem = ?, updated_at = ? WHERE key = ?"
        params = (folder, stem, time.time(), key)
        await self._run(lambda db: db.execute(sql, params))

    async def record_downloaded(self, key: str, files: Sequence[DownloadedFile]) -> None:
        """Every output file is on disk and verified (paths kept absolute)."""
        listing = [to_wire(attrs.evolve(f, path=f.path.absolute())) for f in files]
        await self._upsert(key, state=JournalState.DOWNLOADED.value, files=json.dumps(listing))

    async def record_failed(self, key: str, error: FalEditError) -> None:
        """The item failed for good, by fal's verdict (its error is kept, never the key)."""
        await self._upsert(key, state=JournalState.FAILED.value, **_error(error))

    async def record_cancelled(self, key: str) -> None:
        """fal confirmed the job was cancelled; a new run submits the item again."""
        await self._upsert(key, state=JournalState.CANCELLED.value)


def _error(error: FalEditError) -> dict[str, Any]:
    return {
        "error": str(error),
        "error_type": getattr(error, "error_type", None) or type(error).__name__,
    }
