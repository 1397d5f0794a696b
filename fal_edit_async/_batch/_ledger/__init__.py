"""The batch ledger: its states and transitions (``_states``), what a batch needs of a backend
(``_backend``), and the two backends: SQLite, one file and one writer (``_sqlite``), and
PostgreSQL, one database that many workers share (``_postgres``)."""

from __future__ import annotations

import os

from ._backend import Claim, JournalBackend, LeaseLost
from ._postgres import PostgresJournal, is_postgres_dsn
from ._sqlite import Journal
from ._states import IN_FLIGHT, JournalEntry, JournalState, JournalSummary

__all__ = [
    "IN_FLIGHT",
    "Claim",
    "Journal",
    "JournalBackend",
    "JournalEntry",
    "JournalState",
    "JournalSummary",
    "LeaseLost",
    "PostgresJournal",
    "is_postgres_dsn",
    "open_journal",
]


def open_journal(
    spec: str | os.PathLike[str] | JournalBackend, *, read_only: bool = False
) -> JournalBackend:
    """The ledger ``spec`` names: a ``postgresql://`` address, or a SQLite journal file (an
    open ledger is returned as it is). Nothing is opened yet."""
    if isinstance(spec, Journal | PostgresJournal):
        return spec
    if is_postgres_dsn(spec):
        assert isinstance(spec, str)
        return PostgresJournal(spec, read_only=read_only)
    if isinstance(spec, str | os.PathLike):
        return Journal(spec, read_only=read_only)
    return spec
