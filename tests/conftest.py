"""Shared pytest configuration: the async backend, the emulator, and a client pointed at it."""

from __future__ import annotations

import asyncio
import asyncio.futures
import base64
import io
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
from PIL import Image

from fal_edit_async import AsyncClient, Polling, RetryPolicy, Timeouts
from fal_edit_async.emulator import Emulator

# tests/typing/ is only type-checked (``mypy --strict tests/typing/api.py``), never run.
collect_ignore = ["typing"]

#: Retries keep every decision but never sleep; polling (when used) spins briefly.
FAST_RETRY = RetryPolicy(wait=False, max_attempts=4)
FAST_POLLING = Polling(queued_interval=0.01, in_progress_interval=0.01, max_interval=0.02)


#: Variables a developer's shell may hold that would point a test at real fal or a real key.
FAL_ENVIRONMENT = (
    "FAL_KEY",
    "FAL_KEY_ID",
    "FAL_KEY_SECRET",
    "FAL_QUEUE_URL",
    "FAL_REST_URL",
    "FAL_API_URL",
)


@pytest.fixture(autouse=True)
def _clean_fal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's FAL_* variables (as httpx's suite cleans its own)."""
    for name in FAL_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests on asyncio only: aiohttp, our transport, is asyncio-only."""
    return "asyncio"


def make_png(
    size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    """A small real PNG, made in memory."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    """A small real PNG input image."""
    return make_png()


@pytest.fixture(scope="session")
def png_data_uri(png_bytes: bytes) -> str:
    """The input image as a data URI, which the emulator reads without any fetch."""
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode()


#: What ``asyncio.sleep()`` (and so ``anyio.sleep()``) schedules with ``loop.call_later``; other
#: timers (aiohttp's read timeouts, for one) schedule other callbacks and keep real time.
_SLEEP_WAKER = asyncio.futures._set_result_unless_cancelled  # type: ignore[attr-defined]


@pytest.fixture
async def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make every sleep in this test return at once, recording how long it asked for.

    A test can then assert how long the client chose to wait (Retry-After, its cap, polling
    intervals) without waiting and without reading a clock. Timeouts are not touched.
    """
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    schedule = loop.call_later

    def call_later(
        delay: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        if callback is _SLEEP_WAKER:
            delays.append(delay)
            delay = 0
        return schedule(delay, callback, *args, context=context)

    monkeypatch.setattr(loop, "call_later", call_later)
    await anyio.sleep(0.001)  # if asyncio ever sleeps another way, fail here, loudly
    assert [0.001] == delays, "sleeps fixture: anyio.sleep() no longer goes through call_later"
    delays.clear()
    return delays


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A fresh emulator on ephemeral loopback ports, stopped after the test."""
    async with Emulator(workers=4, fast_images=True) as emu:
        yield emu
        assert [] == emu.internal_errors


def client_for(emu: Emulator, **overrides: object) -> AsyncClient:
    """A client pointed at ``emu``, with retries that never sleep."""
    options: dict[str, object] = {
        "api_key": emu.api_key,
        "queue_url": emu.queue_url,
        "rest_url": emu.rest_url,
        "api_url": emu.rest_url,
        "retry": FAST_RETRY,
        "polling": FAST_POLLING,
        "timeouts": Timeouts(cancel=5.0),
    }
    options.update(overrides)
    return AsyncClient(**options)  # type: ignore[arg-type]


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[AsyncClient]:
    """A client pointed at the emulator, closed after the test."""
    async with client_for(emulator) as c:
        yield c


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """A journal for one test, on each backend: a SQLite file, or a fresh PostgreSQL schema's
    ``postgresql://`` address (skipped outside CI when no server is set up)."""
    if request.param == "sqlite":
        yield tmp_path / "j"
        return
    from ._postgres import fresh_schema

    with fresh_schema() as dsn:
        yield dsn


@pytest.fixture
def postgres_ledger() -> Iterator[str]:
    """A fresh PostgreSQL schema's address (skipped outside CI when no server is set up)."""
    from ._postgres import fresh_schema

    with fresh_schema() as dsn:
        yield dsn
