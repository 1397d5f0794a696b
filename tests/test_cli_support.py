"""Helpers for the CLI tests (no tests here): an emulator on its own thread, inputs, output.

``main()`` runs its own event loop, so the in-process tests run the emulator on a second
loop in a thread (an anyio blocking portal) and talk to it over real loopback HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from fal_edit_async import AsyncClient, EditImageInput
from fal_edit_async.emulator import Emulator

from .conftest import FAST_POLLING, FAST_RETRY, make_png

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CREDENTIAL_VARS = ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_QUEUE_URL", "FAL_REST_URL")


def clear_fal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or URLs from the developer's shell leak into a test."""
    for name in _CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)


@contextmanager
def emulator_thread(
    monkeypatch: pytest.MonkeyPatch, **options: Any
) -> Iterator[tuple[BlockingPortal, Emulator]]:
    """A running emulator on a thread's event loop, with FAL_KEY and the URLs pointing at it."""
    clear_fal_env(monkeypatch)
    settings: dict[str, Any] = {"workers": 4, "fast_images": True, **options}
    with start_blocking_portal("asyncio") as portal:
        emu = Emulator(**settings)
        portal.call(emu.start)
        try:
            monkeypatch.setenv("FAL_KEY", emu.api_key)
            monkeypatch.setenv("FAL_QUEUE_URL", emu.queue_url)
            monkeypatch.setenv("FAL_REST_URL", emu.rest_url)
            yield portal, emu
        finally:
            portal.call(emu.aclose)
    assert [] == emu.internal_errors


def submit_job(portal: BlockingPortal, emu: Emulator, prompt: str = "make it pixel art") -> str:
    """Submit one job to the emulator (from its own loop) and return its request id."""

    async def submit() -> str:
        async with AsyncClient(
            api_key=emu.api_key,
            queue_url=emu.queue_url,
            rest_url=emu.rest_url,
            retry=FAST_RETRY,
            polling=FAST_POLLING,
        ) as client:
            input = EditImageInput(prompt=prompt, image_urls=[make_png()])
            return (await client.submit(input)).request_id

    return portal.call(submit)


def write_images(folder: Path, *names: str, size: tuple[int, int] = (48, 32)) -> list[Path]:
    """Small real PNG files named ``names`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(make_png(size))
    return paths


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as a JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def plain(text: str) -> str:
    """Terminal output without its colour and cursor escape codes."""
    return _ANSI.sub("", text).replace("\r", "")
