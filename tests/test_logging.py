"""Logging: one DEBUG line per request, INFO for retries, reconnects and polling, no key ever.

Requests go to the emulator over loopback; its faults make the retries and reconnects.
"""

from __future__ import annotations

import logging
import re

import pytest

from fal_edit_async import Polling
from fal_edit_async._logging import logger, setup_from_env
from fal_edit_async.emulator import Emulator

from .conftest import client_for
from .test_credentials import KEY, leaks

LINE = re.compile(
    r"^(GET|POST|PUT) (http://127\.0\.0\.1:\d+/\S+) (\d{3}) \d+ ms( request_id=\S+)?$"
)


@pytest.fixture
async def keyed() -> Emulator:
    """An emulator that takes only the recognisable test key."""
    async with Emulator(workers=2, fast_images=True, api_key=KEY) as emu:
        yield emu  # type: ignore[misc]


async def test_one_debug_line_per_request_without_the_key(
    keyed: Emulator, png_data_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each request is one DEBUG line: method, URL, status, duration, request id; no key."""
    caplog.set_level(logging.DEBUG, logger="fal_edit_async")
    async with client_for(keyed) as fal:
        out = await fal.edit({"prompt": "pixel art", "image_urls": [png_data_uri]})
        requests = fal.statistics().requests
    lines = [r.getMessage() for r in caplog.records if r.name == "fal_edit_async"]

    assert out.images
    assert requests == len(lines)
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].startswith("POST ") and " 200 " in lines[0] and "request_id=" in lines[0]
    assert [] == leaks("\n".join(lines))
    assert [] == leaks(caplog.text)


async def test_a_failed_request_is_logged_with_its_error(
    keyed: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A 404 is logged with its status (the client raises as before)."""
    caplog.set_level(logging.DEBUG, logger="fal_edit_async")
    async with client_for(keyed) as fal:
        with pytest.raises(Exception, match=r"404|unknown"):
            await fal.status("no-such-id")
    assert any(" 404 " in r.getMessage() for r in caplog.records)


async def test_retries_reconnects_and_polling_are_info(
    keyed: Emulator, png_data_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 retried, a dropped stream reconnected and a fallback to polling each log INFO."""
    caplog.set_level(logging.INFO, logger="fal_edit_async")
    keyed.schedule_fault("submit", "ingress_error")
    for _ in range(2):
        keyed.schedule_fault("stream", "stream_drop")
    polling = Polling(
        queued_interval=0.01, in_progress_interval=0.01, max_interval=0.02, stream_failures=2
    )
    async with client_for(keyed, polling=polling) as fal:
        await fal.edit({"prompt": "pixel art", "image_urls": [png_data_uri]})
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]

    assert any(m.startswith("retrying (server_error, attempt 2 of 4)") for m in infos), infos
    assert any(m.startswith("reconnecting the status stream of ") for m in infos), infos
    assert any("polling" in m for m in infos), infos
    assert not any(r.levelno == logging.DEBUG for r in caplog.records)
    assert [] == leaks(caplog.text)


@pytest.mark.parametrize(
    ("value", "level"),
    [
        pytest.param("debug", logging.DEBUG, id="debug"),
        pytest.param("INFO", logging.INFO, id="info"),
    ],
)
def test_fal_edit_log_switches_the_logger_on(
    value: str, level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAL_EDIT_LOG=debug|info sets the level and adds one stderr handler, however often."""
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "handlers", [])
    setup_from_env({"FAL_EDIT_LOG": value})
    setup_from_env({"FAL_EDIT_LOG": value})
    assert level == logger.level
    assert 1 == len(logger.handlers)


def test_without_fal_edit_log_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset or unknown, the library adds no handler and leaves the level to the app."""
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "handlers", [])
    setup_from_env({})
    setup_from_env({"FAL_EDIT_LOG": "loud"})
    assert (logging.NOTSET, []) == (logger.level, logger.handlers)


def test_a_new_client_reads_fal_edit_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a client honours FAL_EDIT_LOG (as the CLI and scripts do)."""
    from fal_edit_async import AsyncClient

    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setenv("FAL_EDIT_LOG", "debug")
    AsyncClient(api_key="k")
    assert logging.DEBUG == logger.level
