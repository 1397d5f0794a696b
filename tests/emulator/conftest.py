"""Fixtures for the emulator tests: a running emulator and HTTP sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from fal_edit_async.emulator import Emulator


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator with fast placeholder images (tests about images build their own)."""
    async with Emulator(workers=4, fast_images=True) as emulator:
        yield emulator
    assert [] == emulator.internal_errors


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A session that sends the emulator's key on every request."""
    headers = {"Authorization": f"Key {emu.api_key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield session


@pytest.fixture
async def cdn() -> AsyncIterator[aiohttp.ClientSession]:
    """A session without credentials, for CDN downloads."""
    async with aiohttp.ClientSession() as session:
        yield session
