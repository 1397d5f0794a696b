"""The embedded ledger: one SQLite file, written by one process at a time.

WAL mode, with an exclusive ``flock`` on the file (released by the kernel however the process
ends). Rows and transitions are ``_states``'; this module only stores them. ``submitting`` and
``submitted`` (and ``unknown``) are fsynced before they count (before the paid POST and
after fal's answer): what ``synchronous=FULL`` does, an fsync of the WAL after the commit, done
in a worker thread so the loop never waits for the disk (``_group_commit``). Other writes are
``synchronous=NORMAL``, which survives a crash
of this process but maybe not a power cut. Since only this process writes, a row still
``submitting`` when the journal is opened belongs to a run that died mid-submit: it becomes
``unknown`` at once.

The remaining gap: a job whose submit answer was lost (``unknown``) may have run and billed;
only fal's request history can tell.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.to_thread
import attrs

from ..._exceptions import JournalError, JournalLockedError
from ._backend import Claim
from ._group_commit import GroupCommit, Operation
from ._states import (
    LOST_ANSWER,
    JournalEntry,
    JournalState,
    JournalSummary,
    Recorder,
    entry_of,
    summarise,
)
from ._webhooks import WEBHOOK_COLUMNS, WebhookRecords

__all__ = ["Journal"]

T = TypeVar("T")

_SCHEMA_VERSION = "2"
#: Commits between two checkpoints of the WAL (SQLite's own default is about 1,000 pages).
_CHECKPOINT_EVERY = 100
#: A WAL of this many frames (pages) or more after a checkpoint is checkpointed again soon.
_LONG_WAL = 1000
#: What ``<journal>.lock`` holds: a pid; any other content is someone else's file.
_HOLDER_NOTE = re.compile(rb"pid \d+\n?")
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
    stem TEXT,
    sent_body TEXT,
    start_timeout REAL,
    past_ids TEXT
);
CREATE TABLE IF NOT EXISTS webhooks (
    request_id TEXT PRIMARY KEY,
    batch TEXT,
    item TEXT,
    attempt INTEGER,
    user_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    status TEXT NOT NULL,
    payload TEXT,
    error TEXT,
    payload_error TEXT,
    gateway_request_id TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_by_tag ON webhooks (item, attempt);
"""
#: Columns added since schema 1 (``sent_at``, ``folder``, ``stem``) and since (what
#: reconciling needs), for journals written before: each is added when missing.
_ADDED_COLUMNS = {
    "sent_at": "REAL",
    "folder": "TEXT",
    "stem": "TEXT",
    "sent_body": "TEXT",
    "start_timeout": "REAL",
    "past_ids": "TEXT",
}


class Journal(Recorder, WebhookRecords):
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
        # One connection, used on the loop one transaction at a time (opened and closed in a
        # worker thread); the WAL's fsyncs and checkpoints take their own, in a worker thread.
        self._lock = threading.Lock()
        self._group: GroupCommit[sqlite3.Connection] = GroupCommit(
            self._commit, self._sync, tidy_every=_CHECKPOINT_EVERY
        )
        self._wal: int | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._closed = False
        self._writer_alive = False
        #: Written by schema 1, so rows may be keyed as its command line keyed them.
        self.has_legacy_keys = False
        self._legacy_listed = False

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
            self._check_parted(db)  # before WAL mode, which writes a new file's first page
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (two fsyncs each) run in the thread that fsyncs, not in a commit.
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._migrate(db)
            # Only this process writes: a row left mid-submit is a dead run's.
            db.execute(
                "UPDATE items SET state = ?, error = ? WHERE state = ?",
                (JournalState.UNKNOWN.value, LOST_ANSWER, JournalState.SUBMITTING.value),
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
        try:
            self._check_items(db, read_only=True)
        except sqlite3.Error as exc:
            db.close()
            raise JournalError(f"{self.path}: cannot read the journal: {exc}") from exc
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

    @staticmethod
    def _check_items(
        db: sqlite3.Connection, tables: set[str] | None = None, *, read_only: bool = False
    ) -> None:
        """Raise when the journal's items table is gone (a journal is made whole, in one
        transaction, so only a hand takes it away): made anew, every item would be paid
        again."""
        if tables is None:
            tables = _tables(db)
        if not tables and read_only:
            raise sqlite3.DatabaseError(
                "it holds no journal tables (copied or moved without its -wal file?)"
            )
        if tables & {"meta", "webhooks"} and "items" not in tables:
            raise sqlite3.DatabaseError(
                "its items table is gone (dropped by hand?); restore the journal from a copy"
            )

    def _check_parted(self, db: sqlite3.Connection) -> None:
        """Raise for a file that is not empty yet holds no tables.

        Until SQLite first checkpoints, a journal's tables and rows are all in its -wal file:
        such a file was parted from it (copied or moved alone after a killed run), or is no
        journal. Made anew, every item would be paid again.
        """
        if _tables(db) or self.path.resolve().stat().st_size == 0:
            return
        raise sqlite3.DatabaseError(
            "it holds no journal tables: if it was copied or moved without the "
            f"{self.path.name}-wal file beside it, put that file next to it; if not "
            "(a run killed as it created the journal, or another file), delete it"
        )

    def _migrate(self, db: sqlite3.Connection) -> None:
        tables = _tables(db)
        if tables and "meta" not in tables:
            if tables & {"items", "webhooks"}:
                raise sqlite3.DatabaseError(
                    "its meta table is gone (dropped by hand?); restore the journal from a copy"
                )
            raise sqlite3.DatabaseError("not a fal-edit journal (another program's database)")
        self._check_items(db, tables)
        if not tables:  # one transaction: a new journal's schema is there whole, or not at all
            db.executescript(
                f"BEGIN; {_SCHEMA} INSERT INTO meta VALUES ('schema', '{_SCHEMA_VERSION}'); COMMIT;"
            )
            return
        db.executescript(_SCHEMA)
        found = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if found is None:
            # Written with the tables since, and before any row: a journal with rows and no
            # schema row had it removed, and which schema its rows follow is not known.
            if db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None:
                raise sqlite3.DatabaseError(
                    "its schema row is gone (edited by hand?); restore the journal from a copy"
                )
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
            # Which rows schema 1 wrote, before any is: a keyed item's row written later
            # (``key@fingerprint``) has the very shape of a schema-1 ``name@fingerprint``.
            db.execute("CREATE TABLE IF NOT EXISTS legacy_keys (key TEXT PRIMARY KEY)")
            db.execute("INSERT OR IGNORE INTO legacy_keys SELECT key FROM items")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('legacy_keys', '2')")
            db.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (_SCHEMA_VERSION,))
        elif found["value"] != _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"journal schema {found['value']} is not supported")
        legacy = db.execute("SELECT value FROM meta WHERE name = 'legacy_keys'").fetchone()
        self.has_legacy_keys = legacy is not None
        # '2': the rows schema 1 wrote are listed in legacy_keys (a migration before that
        # list was kept cannot tell them from keyed items' rows).
        self._legacy_listed = legacy is not None and legacy["value"] == "2"

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
        self._write_holder()

    def _write_holder(self) -> None:
        """Note who holds the journal, for the next one's message, in ``<journal>.lock``;
        never over a file that is not such a note (it may be another journal by that name),
        and never through a symlink."""
        with contextlib.suppress(OSError):
            fd = os.open(self._holder_path(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                if _HOLDER_NOTE.fullmatch(os.read(fd, 64) or b"pid 0\n"):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
            finally:
                os.close(fd)

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
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._group.aclose()  # what callers asked for lands before the file shuts
            db, self._db = self._db, None
            if db is not None:
                await anyio.to_thread.run_sync(self._close, db)
            self._release_lock()

    def _close(self, db: sqlite3.Connection) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        with contextlib.suppress(sqlite3.Error):
            if checkpointer is not None:
                checkpointer.close()
        db.close()  # the last connection: SQLite checkpoints and removes the WAL
        wal, self._wal = self._wal, None
        if wal is not None:
            os.close(wal)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        if self._db is None:
            await self.open()
        try:
            return await self._group.run(fn, durable=durable)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"{self.path}: {exc}") from exc

    def _commit(self, batch: Sequence[Operation[sqlite3.Connection]]) -> None:
        """One transaction for every queued operation (on the loop, not waiting for the
        disk: :meth:`_sync` makes the paid writes durable).

        One operation that fails must leave the others' writes. They run bare first (a
        savepoint around each cost three statements per write); should one raise, that
        transaction is rolled back whole, and run again with each under its own savepoint.
        An error that ends the transaction itself (a full disk, an I/O error, a trigger's
        ``RAISE(ROLLBACK)``) takes the savepoints with it: then each operation runs in a
        transaction of its own, so only the ones that fail keep an error, each its own.
        """
        db = self._db
        if db is None:
            raise JournalError(f"{self.path}: the journal is closed")
        with self._lock:
            if not _transaction(db, batch, savepoints=False) and not _transaction(
                db, batch, savepoints=True
            ):
                for op in batch:
                    _alone(db, op)

    def _sync(self, durable: bool, tidy: bool) -> bool:
        """Maybe in a worker thread: fsync the WAL (what ``synchronous=FULL`` adds to a
        commit), so every commit so far survives a power cut; with ``tidy``, no commit runs
        meanwhile, and the WAL is checkpointed (whole, so SQLite starts it over).

        True when the WAL is still long after that: a reader (``fal-edit journal show``)
        kept SQLite from starting it over, so the next checkpoint should come soon, as
        SQLite's own come after every commit once the WAL is that long."""
        if self.read_only:
            return False
        wal = self._wal_fd() if durable else None
        if wal is not None:
            os.fsync(wal)
        if not tidy:
            return False
        # Its own connection, as the loop's may be reading meanwhile; PASSIVE never waits
        # for a reader. A failure is only a longer WAL: the next one (or the close) catches up.
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path.resolve(), check_same_thread=False, isolation_level=None
                )
            row = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return True
        return row is not None and int(row[1]) >= _LONG_WAL

    def _wal_fd(self) -> int | None:
        """A descriptor of the WAL, opened once (None before SQLite made the file)."""
        if self._wal is None:
            wal = self.path.resolve().with_name(self.path.resolve().name + "-wal")
            try:
                self._wal = os.open(wal, os.O_RDONLY)
            except FileNotFoundError:
                return None  # nothing was ever written to it
            # A new file's name must reach the disk too (as SQLite syncs it, once).
            _fsync_folder(wal.parent)
        return self._wal

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, if any."""

        def read(db: sqlite3.Connection) -> JournalEntry | None:
            row = db.execute("SELECT * FROM items WHERE key = ?", (key,)).fetchone()
            return entry_of(dict(row)) if row else None

        return await self._run(read)

    async def entries(self) -> list[JournalEntry]:
        """Every entry, oldest change first."""

        def read(db: sqlite3.Connection) -> list[JournalEntry]:
            rows = db.execute("SELECT * FROM items ORDER BY updated_at").fetchall()
            return [entry_of(dict(r)) for r in rows]

        return await self._run(read)

    async def summary(self) -> JournalSummary:
        """Counts by state, the cost of accepted jobs, and the items that need attention."""
        entries = await self.entries()
        if self.read_only and not self._writer_alive:
            # Nobody is writing: a row still mid-submit belongs to a run that died there.
            entries = [
                attrs.evolve(e, state=JournalState.UNKNOWN, error=e.error or LOST_ANSWER)
                if e.state is JournalState.SUBMITTING
                else e
                for e in entries
            ]
        return summarise(self.path, entries)

    async def _upsert(self, key: str, values: dict[str, Any], *, durable: bool = False) -> None:
        if self.read_only:
            raise JournalError(f"{self.path}: opened read-only")
        values = {**values, "updated_at": time.time()}
        sql = _upsert_sql(tuple(values))
        params = (key, *values.values())
        await self._run(lambda db: db.execute(sql, params), durable=durable)

    async def _update(self, key: str, values: dict[str, Any]) -> None:
        if self.read_only:
            raise JournalError(f"{self.path}: opened read-only")
        values = {**values, "updated_at": time.time()}
        sql = _update_sql(tuple(values))
        params = (*values.values(), key)
        await self._run(lambda db: db.execute(sql, params))

    async def _update_unknown(
        self, seen: JournalEntry, values: dict[str, Any], *, job: str | None = None
    ) -> bool:
        if self.read_only:
            raise JournalError(f"{self.path}: opened read-only")
        values = {**values, "updated_at": time.time()}
        sets = ", ".join(f"{c} = ?" for c in values)
        # ``IS`` compares NULL with NULL as equal: a row that recorded no sent_at still matches.
        sql = f"UPDATE items SET {sets} WHERE key = ? AND state = ? AND sent_at IS ?"
        params: tuple[Any, ...] = (
            *values.values(),
            seen.key,
            JournalState.UNKNOWN.value,
            seen.sent_at,
        )
        if job is not None:
            sql += (
                " AND NOT EXISTS (SELECT 1 FROM items o WHERE o.key <> ? AND "
                "(o.request_id = ? OR instr(coalesce(o.past_ids, ''), ?) > 0))"
            )
            params += (seen.key, job, json.dumps(job))
        return await self._run(lambda db: db.execute(sql, params).rowcount == 1, durable=True)

    async def _insert_webhook(self, row: dict[str, Any]) -> bool:
        if self.read_only:
            raise JournalError(f"{self.path}: opened read-only")
        sql = (
            f"INSERT INTO webhooks ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)}) "
            "ON CONFLICT(request_id) DO NOTHING"
        )
        params = tuple(row.values())
        return await self._run(lambda db: db.execute(sql, params).rowcount == 1, durable=True)

    async def _webhook_rows(
        self, *, request_id: str | None = None, tag: tuple[str, int] | None = None
    ) -> list[Mapping[str, Any]]:
        sql = f"SELECT {', '.join(WEBHOOK_COLUMNS)} FROM webhooks"
        params: tuple[Any, ...] = ()
        if request_id is not None:
            sql, params = sql + " WHERE request_id = ?", (request_id,)
        elif tag is not None:
            sql, params = sql + " WHERE item = ? AND attempt = ?", tag
        sql += " ORDER BY received_at"

        def read(db: sqlite3.Connection) -> list[Mapping[str, Any]]:
            if "webhooks" not in _tables(db):
                return []  # a read-only look at a journal written before webhooks
            return [dict(r) for r in db.execute(sql, params)]

        return await self._run(read)

    async def _meta_value(self, name: str, make: Callable[[], str]) -> str:
        def read_or_make(db: sqlite3.Connection) -> str:
            found = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            if found is not None:
                return str(found["value"])
            if self.read_only:
                raise sqlite3.OperationalError(f"no {name} in a journal opened read-only")
            value = make()
            db.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
            return value

        return await self._run(read_or_make, durable=True)

    async def legacy_row(self, fingerprint: str, taken: set[str]) -> JournalEntry | None:
        """A schema-1 row for this content under a name (``<name>@<fingerprint>``, as the
        command line keyed items then), not yet claimed by another item of this run.

        Only a journal migrated from schema 1 is searched: the scan is per new item.
        """
        if not self.has_legacy_keys:
            return None

        def read(db: sqlite3.Connection) -> list[JournalEntry]:
            sql = "SELECT * FROM items WHERE key LIKE ? ESCAPE '\\'"
            if self._legacy_listed:  # only the rows schema 1 wrote
                sql += " AND key IN (SELECT key FROM legacy_keys)"
            pattern = "%@" + fingerprint.replace("%", "\\%").replace("_", "\\_")
            rows = db.execute(sql + " ORDER BY key", (pattern,)).fetchall()
            return [entry_of(dict(r)) for r in rows]

        return next((e for e in await self._run(read) if e.key not in taken), None)

    # -- work sharing: one writer holds every item ------------------------------------------

    @property
    def shared(self) -> bool:
        """Never: the file lock keeps every other writer out."""
        return False

    @property
    def where(self) -> Path:
        """The journal's file."""
        return self.path

    async def claim(self, key: str) -> Claim:
        """The row, if any: this process holds every item of the file."""
        return Claim(entry=await self.get(key))

    async def claimable(self, keys: Sequence[str]) -> set[str]:
        """Every key: no other worker holds any."""
        return set(keys)

    async def release(self, key: str) -> None:
        """Nothing to release: the file lock covers every item."""

    async def keep_leases(self) -> None:
        """Nothing to keep: the file lock lasts as long as the process."""

    async def owner_of(self, request_id: str) -> str | None:
        """The key of the row holding ``request_id``."""

        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT key FROM items WHERE request_id = ? LIMIT 1", (request_id,)
            ).fetchone()
            return str(row["key"]) if row else None

        return await self._run(read)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _transaction(
    db: sqlite3.Connection, batch: Sequence[Operation[sqlite3.Connection]], *, savepoints: bool
) -> bool:
    """Run ``batch`` in one transaction and commit it. Without ``savepoints`` an operation
    that raises rolls everything back and this returns False (nothing landed, no operation
    has an outcome); with them, that operation alone is undone and keeps its error, unless
    its error ended the whole transaction: False again."""
    try:
        db.execute("BEGIN IMMEDIATE")
        for op in batch:
            if savepoints:
                db.execute("SAVEPOINT op")
            try:
                op.result = op.fn(db)
            except Exception as exc:  # this operation's, raised to its caller
                if not savepoints or not db.in_transaction:
                    if db.in_transaction:  # not after SQLite rolled it back itself
                        db.execute("ROLLBACK")
                    for done in batch:
                        done.result, done.error = None, None
                    return False
                db.execute("ROLLBACK TO op")
                op.error = exc
            if savepoints:
                db.execute("RELEASE op")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        for op in batch:
            op.result = None  # nothing of the batch landed
        raise
    return True


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# The statements, by the columns they write: a handful of shapes, built once each (a
# journaled item writes four times).
@functools.lru_cache(maxsize=64)
def _upsert_sql(columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return (
        f"INSERT INTO items (key, {names}) VALUES (?, {marks}) "
        f"ON CONFLICT(key) DO UPDATE SET {updates}"
    )


@functools.lru_cache(maxsize=64)
def _update_sql(columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = ?" for c in columns)
    return f"UPDATE items SET {sets} WHERE key = ?"


def _alone(db: sqlite3.Connection, op: Operation[sqlite3.Connection]) -> None:
    """``op`` in a transaction of its own: its result, or its own error."""
    try:
        db.execute("BEGIN IMMEDIATE")
        op.result = op.fn(db)
        db.execute("COMMIT")
    except Exception as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        op.result, op.error = None, exc
