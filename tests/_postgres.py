"""A throw-away PostgreSQL schema per test, on the server ``.ci/run`` starts.

``FAL_EDIT_TEST_POSTGRES`` holds the server's address. Without it the tests that need the
server skip, saying why; under ``CI=true`` they fail instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ENV = "FAL_EDIT_TEST_POSTGRES"


def server() -> str:
    """The test server's address, or skip (fail under CI) when there is none."""
    dsn = os.environ.get(ENV)
    if dsn:
        return dsn
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {ENV} is not set: .ci/run must start PostgreSQL")
    pytest.skip(f"needs PostgreSQL: set {ENV} to a postgresql:// address (bash .ci/run does)")


def with_schema(dsn: str, schema: str) -> str:
    """``dsn`` with ``schema`` as its search path."""
    return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """The address of a new, empty schema, dropped afterwards."""
    import psycopg

    dsn = server()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(dsn, schema)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def execute(journal: Path | str, sql: str, *params: Any) -> None:
    """Run ``sql`` against the journal's rows by another hand (``{items}`` is their table)."""
    if isinstance(journal, str):
        import psycopg

        with psycopg.connect(journal, autocommit=True) as conn:
            conn.execute(sql.format(items="fal_edit_items"), params or None)
    else:
        import sqlite3

        with sqlite3.connect(journal) as db:
            db.execute(sql.format(items="items"), params)
