"""A shared ledger: one PostgreSQL database (or schema) that many workers write at once.

Rows and transitions are ``_states``' (the same as the SQLite journal's), in the table
``fal_edit_items`` of the connection's current schema, plus two columns for work sharing:
``holder`` (the worker working on the item) and ``lease_until`` (the database's clock, so the
workers' clocks never matter).

- **Claims.** A worker claims an item before working on it: one ``INSERT … ON CONFLICT DO
  UPDATE … WHERE`` that creates the row (``pending``) or takes it when nobody holds it, the
  lease expired, or the worker holds it already. A row taken over from a dead worker while it
  was ``submitting`` becomes ``unknown`` in the same statement (fal may have queued that job);
  a ``submitted`` row is re-attached by its request id. ``claimable`` checks many deferred
  items at once with ``SELECT … FOR UPDATE SKIP LOCKED``, so workers never wait on each other.
- **Leases.** :meth:`PostgresJournal.keep_leases` renews every lease of this worker in one
  ``UPDATE`` each third of the lease; :meth:`release` frees an item when its worker is done,
  and :meth:`aclose` frees them all. The paid write (``submitting``) lands only while this
  worker still holds the item: a worker that lost its lease sends no submit (:class:`LeaseLost`).
- **A global cap.** With ``max_in_flight``, the ``submitting`` write first takes a
  transaction-scoped advisory lock, counts the rows in flight (:data:`IN_FLIGHT`) that a live
  worker follows (held, lease not expired: every worker's), and writes only under the cap;
  otherwise it waits and asks again. A row nobody follows (its item ended and was released,
  its worker died and the lease ran out, or no running batch has its item) does not count,
  so the cap can never wait on something that will not move.
- **Durability.** Connections run with ``synchronous_commit = off`` (like SQLite's
  ``NORMAL``: a crash of the worker loses nothing, a crash of the server may lose the last
  commits); ``submitting``, ``submitted`` and ``unknown`` commit with ``synchronous_commit =
  on``, so they are on the server's disk before the POST is sent or anything else happens.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import attrs

from ..._exceptions import JournalError
from ..._models import DownloadedFile
from ._backend import Claim, LeaseLost
from ._states import (
    IN_FLIGHT,
    LOST_ANSWER,
    JournalEntry,
    JournalState,
    JournalSummary,
    Recorder,
    entry_of,
    submitting_columns,
    summarise,
)
from ._webhooks import WEBHOOK_COLUMNS, WebhookRecords

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow

__all__ = ["PostgresJournal", "is_postgres_dsn"]

_SCHEMA_VERSION = "pg1"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fal_edit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS fal_edit_items (
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
        updated_at DOUBLE PRECISION NOT NULL,
        sent_at DOUBLE PRECISION,
        folder TEXT,
        stem TEXT,
        holder TEXT,
        lease_until TIMESTAMPTZ,
        sent_body TEXT,
        start_timeout DOUBLE PRECISION,
        past_ids TEXT
    )""",
    # What reconciling a lost submit needs, for ledgers made before it.
    "ALTER TABLE fal_edit_items ADD COLUMN IF NOT EXISTS sent_body TEXT",
    "ALTER TABLE fal_edit_items ADD COLUMN IF NOT EXISTS start_timeout DOUBLE PRECISION",
    "ALTER TABLE fal_edit_items ADD COLUMN IF NOT EXISTS past_ids TEXT",
    """CREATE TABLE IF NOT EXISTS fal_edit_webhooks (
        request_id TEXT PRIMARY KEY,
        batch TEXT,
        item TEXT,
        attempt INTEGER,
        user_id TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        status TEXT NOT NULL,
        payload TEXT,
        error TEXT,
        payload_error TEXT,
        gateway_request_id TEXT,
        received_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS fal_edit_webhooks_by_tag ON fal_edit_webhooks (item, attempt)",
    # What the global cap counts, what owner_of looks up, and what a worker renews.
    "CREATE INDEX IF NOT EXISTS fal_edit_items_in_flight ON fal_edit_items (state) "
    "WHERE state IN ('submitting', 'submitted', 'cancel_requested')",
    "CREATE INDEX IF NOT EXISTS fal_edit_items_request_id ON fal_edit_items (request_id) "
    "WHERE request_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS fal_edit_items_holder ON fal_edit_items (holder) "
    "WHERE holder IS NOT NULL",
)
#: Advisory lock keys, per schema: creating the tables, the in-flight cap, reconcile adoptions.
_SCHEMA_LOCK = "hashtext('fal_edit:schema:' || current_schema())"
_CAP_LOCK = "hashtext('fal_edit:cap:' || current_schema())"
_ADOPT_LOCK = "hashtext('fal_edit:adopt:' || current_schema())"
_IN_FLIGHT = [s.value for s in IN_FLIGHT]
_SCHEMES = ("postgresql://", "postgres://")
# What the cap counts: jobs in flight that a live worker follows (its lease held and not
# expired). A row nobody follows any more (its item ended in this batch and was released, its
# worker died, or it belongs to items no running batch has) must not count, or it would hold a
# slot for ever and every worker waiting for room would wait for ever.
_IN_FLIGHT_LIVE = (
    "SELECT count(*) AS n FROM fal_edit_items "
    "WHERE state = ANY(%s) AND key <> %s AND holder IS NOT NULL AND lease_until > now()"
)

# A claim: create the row, or take it when it is free, expired, or ours already. A row left
# mid-submit by another worker is unknown from now on: fal may have queued its job.
_CLAIM = """
INSERT INTO fal_edit_items AS i (key, state, holder, lease_until, updated_at)
VALUES (%(key)s, 'pending', %(me)s, now() + make_interval(secs => %(lease)s), %(now)s)
ON CONFLICT (key) DO UPDATE SET
    holder = excluded.holder,
    lease_until = excluded.lease_until,
    state = CASE WHEN i.state = 'submitting' AND i.holder IS DISTINCT FROM excluded.holder
                 THEN 'unknown' ELSE i.state END,
    error = CASE WHEN i.state = 'submitting' AND i.holder IS DISTINCT FROM excluded.holder
                 THEN %(lost)s ELSE i.error END
WHERE i.state <> 'downloaded'
  AND (i.holder IS NULL OR i.holder = excluded.holder OR i.lease_until < now())
RETURNING i.*
"""
_CLAIMABLE = """
WITH free AS (
    SELECT key FROM fal_edit_items
    WHERE key = ANY(%(keys)s)
      AND (state = 'downloaded' OR holder IS NULL OR holder = %(me)s OR lease_until < now())
    FOR UPDATE SKIP LOCKED
)
SELECT key FROM free
"""


def is_postgres_dsn(spec: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) address."""
    return isinstance(spec, str) and spec.startswith(_SCHEMES)


def _public(dsn: str) -> str:
    """The address without its password, for messages and summaries."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        return dsn.split("@")[-1]
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "postgresql://<unparsable address>"
    parts.pop("password", None)
    return make_conninfo(**{k: str(v) for k, v in parts.items()})


class PostgresJournal(Recorder, WebhookRecords):
    """A batch ledger in PostgreSQL that many workers share; ``edit_many(journal=...)`` takes
    it, or its address (``"postgresql://user@host/db"``; pick a schema with
    ``?options=-csearch_path%3Dmy_batch``).

    Every worker given the same items claims them one by one: an item another live worker
    holds is left to it and checked again later; an item whose worker died (its lease not
    renewed for ``lease`` seconds) is taken over, re-attached by its request id, or reported
    ``unknown`` when it died mid-submit. ``worker`` names this worker in ``journal show``.

    Usage::

        async with PostgresJournal("postgresql://batch@db/ledger", lease=30) as journal:
            async with client.edit_many(items, journal=journal, max_in_flight=40) as batch:
                ...
    """

    def __init__(
        self,
        dsn: str,
        *,
        read_only: bool = False,
        lease: float = 30.0,
        connections: int = 8,
        worker: str | None = None,
    ) -> None:
        if not is_postgres_dsn(dsn):
            raise JournalError("a PostgreSQL ledger's address starts with postgresql://")
        if not lease > 0:
            raise JournalError(f"lease must be a positive number of seconds, not {lease!r}")
        if connections < 1:
            raise JournalError(f"connections must be at least 1, not {connections!r}")
        self.dsn = dsn
        self.read_only = read_only
        self.lease = float(lease)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.has_legacy_keys = False
        self._size = connections
        # Two sets of connections: the durable writes' (synchronous_commit on, so each is one
        # statement and one round trip) and the others' (off).
        self._free: dict[bool, list[AsyncConnection[DictRow]]] = {False: [], True: []}
        self._slots: dict[bool, anyio.Semaphore] = {}
        #: Keys this worker holds a lease on, so releasing a released item costs nothing.
        self._held: set[str] = set()
        self._opened = False
        self._closed = False
        #: Called with each statement sent (tests check what commits durably).
        self._trace: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"PostgresJournal({self.where!r})"

    @property
    def shared(self) -> bool:
        """Always: any number of workers may write it at once."""
        return True

    @property
    def where(self) -> str:
        """The address, without its password."""
        return _public(self.dsn)

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

    # -- connections --------------------------------------------------------------------

    async def _connect(self, *, durable: bool = False) -> AsyncConnection[DictRow]:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as exc:
            raise JournalError(
                "a postgresql:// journal needs psycopg: pip install 'fal-edit-async[postgres]'"
            ) from exc
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
            await conn.execute(f"SET synchronous_commit = {'on' if durable else 'off'}")
        except psycopg.Error as exc:
            raise JournalError(f"{self.where}: cannot connect to the ledger: {exc}") from exc
        return conn

    async def open(self) -> None:
        """Connect, and create the tables when missing; harmless when already open.

        Raises:
            JournalError: the server cannot be reached, or holds no ledger (read-only).
        """
        if self._closed:
            raise RuntimeError("this journal is closed")
        if self._opened:
            return
        with anyio.CancelScope(shield=True):
            first = await self._connect()
            try:
                await self._prepare(first)
            except BaseException:
                await first.close()
                raise
            self._free = {False: [first], True: []}
            self._slots = {False: anyio.Semaphore(self._size), True: anyio.Semaphore(self._size)}
            self._opened = True

    async def _prepare(self, conn: AsyncConnection[DictRow]) -> None:
        import psycopg

        try:
            if self.read_only:
                cur = await conn.execute("SELECT to_regclass('fal_edit_items') AS t")
                row = await cur.fetchone()
                if row is None or row["t"] is None:
                    raise JournalError(f"{self.where}: no fal-edit ledger there")
                return
            async with conn.transaction():
                # Two workers starting at once must not both create the tables.
                await conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
                cur = await conn.execute(
                    "SELECT to_regclass('fal_edit_meta') AS meta, "
                    "to_regclass('fal_edit_items') AS items, "
                    "to_regclass('fal_edit_webhooks') AS webhooks"
                )
                tables = await cur.fetchone() or {}
                ours = tables.get("meta") is not None or tables.get("webhooks") is not None
                if ours and tables.get("items") is None:
                    # Made in one transaction: only a hand leaves the meta without the items,
                    # and made anew, every item would be paid again.
                    raise JournalError(
                        f"{self.where}: its fal_edit_items table is gone (dropped by hand?); "
                        "restore the ledger from a backup"
                    )
                for statement in _SCHEMA:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO fal_edit_meta VALUES ('schema', %s) ON CONFLICT DO NOTHING",
                    (_SCHEMA_VERSION,),
                )
                cur = await conn.execute("SELECT value FROM fal_edit_meta WHERE name = 'schema'")
                row = await cur.fetchone()
            if row is None or row["value"] != _SCHEMA_VERSION:
                found = row["value"] if row else None
                raise JournalError(f"{self.where}: ledger schema {found} is not supported")
        except psycopg.Error as exc:
            raise JournalError(f"{self.where}: cannot open the ledger: {exc}") from exc

    @asynccontextmanager
    async def _connection(
        self, *, durable: bool = False
    ) -> AsyncIterator[AsyncConnection[DictRow]]:
        if not self._opened:
            await self.open()
        free = self._free[durable]
        async with self._slots[durable]:
            conn = free.pop() if free else None
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    await conn.close()
                conn = await self._connect(durable=durable)
            try:
                yield conn
            finally:
                free.append(conn)

    async def _query(
        self,
        sql: str,
        params: Mapping[str, Any] | Sequence[Any] = (),
        *,
        durable: bool = False,
    ) -> list[dict[str, Any]]:
        """One statement, in its own commit; shielded, so a write that was asked for lands."""
        import psycopg

        rows: list[dict[str, Any]] = []
        with anyio.CancelScope(shield=True):
            try:
                async with self._connection(durable=durable) as conn:
                    if self._trace is not None:
                        self._trace(("DURABLE " if durable else "") + sql.strip())
                    cur = await conn.execute(sql, params)
                    if cur.description:
                        rows = await cur.fetchall()
            except psycopg.Error as exc:
                raise JournalError(f"{self.where}: {exc}") from exc
        return rows

    async def aclose(self) -> None:
        """Release this worker's leases and close the connections; harmless twice."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._opened and not self.read_only:
                try:
                    await self._query(
                        "UPDATE fal_edit_items SET holder = NULL, lease_until = NULL "
                        "WHERE holder = %s",
                        (self.worker,),
                    )
                except JournalError:
                    pass  # unreachable server: the leases expire by themselves
            conns = self._free[False] + self._free[True]
            self._free = {False: [], True: []}
            for conn in conns:
                await conn.close()

    # -- reading ------------------------------------------------------------------------

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, if any."""
        rows = await self._query("SELECT * FROM fal_edit_items WHERE key = %s", (key,))
        return entry_of(rows[0]) if rows else None

    async def entries(self) -> list[JournalEntry]:
        """Every entry, oldest change first."""
        rows = await self._query("SELECT * FROM fal_edit_items ORDER BY updated_at")
        return [entry_of(r) for r in rows]

    async def summary(self) -> JournalSummary:
        """Counts by state, the cost of accepted jobs, the items that need attention, and how
        many items each live worker holds."""
        rows = await self._query(
            "SELECT *, (holder IS NOT NULL AND lease_until > now()) AS live "
            "FROM fal_edit_items ORDER BY updated_at"
        )
        entries: list[JournalEntry] = []
        workers: dict[str, int] = {}
        for row in rows:
            entry = entry_of(row)
            if row["live"]:
                workers[entry.holder or ""] = workers.get(entry.holder or "", 0) + 1
            elif entry.state is JournalState.SUBMITTING:
                # Nobody works on it: its worker died between the submit and fal's answer.
                entry = attrs.evolve(
                    entry, state=JournalState.UNKNOWN, error=entry.error or LOST_ANSWER
                )
            entries.append(entry)
        return summarise(self.where, entries, workers=workers)

    async def legacy_row(self, fingerprint: str, taken: set[str]) -> JournalEntry | None:
        """None: schema-1 keys exist only in SQLite journals."""
        return None

    # -- writing ------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise JournalError(f"{self.where}: opened read-only")

    async def _upsert(self, key: str, values: dict[str, Any], *, durable: bool = False) -> None:
        self._writable()
        values = {**values, "updated_at": time.time()}
        if values.get("state") == JournalState.DOWNLOADED.value and key in self._held:
            values |= {"holder": None, "lease_until": None}  # done: released with this write
        columns = ", ".join(values)
        marks = ", ".join(f"%({c})s" for c in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        sql = (
            f"INSERT INTO fal_edit_items (key, {columns}) VALUES (%(key)s, {marks}) "
            f"ON CONFLICT (key) DO UPDATE SET {updates}"
        )
        await self._query(sql, {**values, "key": key}, durable=durable)

    async def _update(self, key: str, values: dict[str, Any]) -> None:
        self._writable()
        values = {**values, "updated_at": time.time()}
        sets = ", ".join(f"{c} = %({c})s" for c in values)
        await self._query(
            f"UPDATE fal_edit_items SET {sets} WHERE key = %(key)s", {**values, "key": key}
        )

    async def _update_unknown(
        self, seen: JournalEntry, values: dict[str, Any], *, job: str | None = None
    ) -> bool:
        import psycopg

        self._writable()
        values = {**values, "updated_at": time.time()}
        sets = ", ".join(f"{c} = %({c})s" for c in values)
        sql = (
            f"UPDATE fal_edit_items SET {sets} WHERE key = %(key)s AND state = %(unknown)s "
            "AND sent_at IS NOT DISTINCT FROM %(sent_at)s::double precision"
        )
        if job is not None:
            sql += (
                " AND NOT EXISTS (SELECT 1 FROM fal_edit_items o WHERE o.key <> %(key)s AND "
                "(o.request_id = %(job)s OR strpos(coalesce(o.past_ids, ''), %(quoted)s) > 0))"
            )
        params = {
            **values,
            "key": seen.key,
            "unknown": JournalState.UNKNOWN.value,
            "sent_at": seen.sent_at,
            "job": job,
            "quoted": json.dumps(job),
        }
        with anyio.CancelScope(shield=True):
            try:
                async with self._connection(durable=True) as conn, conn.transaction():
                    if self._trace is not None:
                        self._trace("DURABLE " + sql)
                    if job is not None:
                        # Two passes adopting at once: one checks and writes, then the other
                        # (its statement's snapshot taken after the lock) sees that write.
                        await conn.execute(f"SELECT pg_advisory_xact_lock({_ADOPT_LOCK})")
                    cur = await conn.execute(sql, params)
                    written = cur.rowcount == 1
            except psycopg.Error as exc:
                raise JournalError(f"{self.where}: {exc}") from exc
        return written

    async def record_submitting(
        self,
        key: str,
        *,
        endpoint: str,
        input: Mapping[str, Any],
        attempts: int,
        cost: Decimal,
        max_in_flight: int | None = None,
        sent_body: Any = None,
        start_timeout: float | None = None,
        past_ids: Sequence[str] = (),
    ) -> None:
        """A submit for ``key`` is about to be sent: durably, before the POST, and only while
        this worker holds the item and (with ``max_in_flight``) the ledger has room. (The
        body as sent, the start timeout and the earlier jobs are kept as on SQLite.)

        Waits (cancellably) while the ledger has ``max_in_flight`` rows in flight.

        Raises:
            LeaseLost: another worker took the item over; send nothing.
        """
        self._writable()
        values = submitting_columns(
            endpoint,
            input,
            attempts,
            cost,
            sent_body=sent_body,
            start_timeout=start_timeout,
            past_ids=past_ids,
        )
        wait = 0.01
        while not await self._try_submitting(key, values, max_in_flight):
            # Full: ask again soon (jittered, so waiting workers do not ask in step).
            await anyio.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 1.5, 0.2)

    async def _try_submitting(self, key: str, values: dict[str, Any], cap: int | None) -> bool:
        import psycopg

        values = {**values, "updated_at": time.time()}
        sets = ", ".join(f"{c} = %({c})s" for c in values)
        update = f"UPDATE fal_edit_items SET {sets} WHERE key = %(key)s AND holder = %(me)s"
        params = {**values, "key": key, "me": self.worker}
        with anyio.CancelScope(shield=True):
            try:
                async with self._connection(durable=True) as conn, conn.transaction():
                    if self._trace is not None:
                        self._trace("DURABLE " + update)
                    if cap is not None:
                        # One submit decision at a time across every worker: count, then write.
                        await conn.execute(f"SELECT pg_advisory_xact_lock({_CAP_LOCK})")
                        cur = await conn.execute(_IN_FLIGHT_LIVE, (_IN_FLIGHT, key))
                        row = await cur.fetchone()
                        if row is not None and row["n"] >= cap:
                            return False
                    cur = await conn.execute(update, params)
                    if cur.rowcount != 1:
                        raise LeaseLost(key)
            except psycopg.Error as exc:
                raise JournalError(f"{self.where}: {exc}") from exc
        return True

    # -- webhooks -----------------------------------------------------------------------

    async def _insert_webhook(self, row: dict[str, Any]) -> bool:
        self._writable()
        marks = ", ".join(f"%({c})s" for c in row)
        rows = await self._query(
            f"INSERT INTO fal_edit_webhooks ({', '.join(row)}) VALUES ({marks}) "
            "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            row,
            durable=True,
        )
        return bool(rows)

    async def _webhook_rows(
        self, *, request_id: str | None = None, tag: tuple[str, int] | None = None
    ) -> list[Mapping[str, Any]]:
        sql = f"SELECT {', '.join(WEBHOOK_COLUMNS)} FROM fal_edit_webhooks"
        params: tuple[Any, ...] = ()
        if request_id is not None:
            sql, params = sql + " WHERE request_id = %s", (request_id,)
        elif tag is not None:
            sql, params = sql + " WHERE item = %s AND attempt = %s", tag
        return list(await self._query(sql + " ORDER BY received_at", params))

    async def _meta_value(self, name: str, make: Callable[[], str]) -> str:
        if not self.read_only:  # whichever worker asks first makes it; the others read it
            await self._query(
                "INSERT INTO fal_edit_meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (name, make()),
                durable=True,
            )
        rows = await self._query("SELECT value FROM fal_edit_meta WHERE name = %s", (name,))
        if not rows:
            raise JournalError(f"{self.where}: no {name} in a ledger opened read-only")
        return str(rows[0]["value"])

    # -- work sharing -------------------------------------------------------------------

    async def claim(self, key: str) -> Claim:
        """Take ``key``'s lease (creating its row as ``pending``), or say who holds it.

        A downloaded row is nobody's to take: it comes back as it is, with no lease.
        """
        self._writable()
        params = {
            "key": key,
            "me": self.worker,
            "lease": self.lease,
            "now": time.time(),
            "lost": LOST_ANSWER,
        }
        rows = await self._query(_CLAIM, params)
        if rows:
            self._held.add(key)
            return Claim(entry=entry_of(rows[0]))
        entry = await self.get(key)
        if entry is None or entry.state is JournalState.DOWNLOADED:
            return Claim(entry=entry)
        return Claim(entry=entry, held_by=entry.holder or "another worker")

    async def claimable(self, keys: Sequence[str]) -> set[str]:
        """Of ``keys``, those no other live worker holds (or already downloaded)."""
        if not keys:
            return set()
        rows = await self._query(_CLAIMABLE, {"keys": list(keys), "me": self.worker})
        return {r["key"] for r in rows}

    async def release(self, key: str) -> None:
        """Free ``key`` for other workers (only if this worker still holds it)."""
        if self.read_only or key not in self._held:
            return  # never claimed, or released already with its last write
        self._held.discard(key)
        await self._query(
            "UPDATE fal_edit_items SET holder = NULL, lease_until = NULL "
            "WHERE key = %s AND holder = %s",
            (key, self.worker),
        )

    async def record_downloaded(self, key: str, files: Sequence[DownloadedFile]) -> None:
        """Every output file is on disk and verified; the item's lease is released with it
        (one write instead of two: nothing is left to do for it)."""
        await super().record_downloaded(key, files)
        self._held.discard(key)

    async def renew(self) -> int:
        """Push back the expiry of every lease this worker holds; how many there were."""
        rows = await self._query(
            "UPDATE fal_edit_items SET lease_until = now() + make_interval(secs => %s) "
            "WHERE holder = %s RETURNING key",
            (self.lease, self.worker),
        )
        return len(rows)

    async def keep_leases(self) -> None:
        """Renew this worker's leases every third of the lease, until cancelled.

        A renewal that fails is tried again at the next turn; should the leases expire
        meanwhile, other workers take the items over and this one sends no submit for them.
        """
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                await self.renew()
            except JournalError:
                pass

    async def owner_of(self, request_id: str) -> str | None:
        """The key of the row holding ``request_id``, if any (every worker's rows)."""
        rows = await self._query(
            "SELECT key FROM fal_edit_items WHERE request_id = %s LIMIT 1", (request_id,)
        )
        return str(rows[0]["key"]) if rows else None
