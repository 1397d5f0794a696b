"""Shared pytest configuration: what to skip collecting, and the one async backend we run on."""

from __future__ import annotations

import pytest

# tests/typing/ is only type-checked (``mypy --strict tests/typing/api.py``), never run.
collect_ignore = ["typing"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests on asyncio only: aiohttp, our transport, is asyncio-only."""
    return "asyncio"
