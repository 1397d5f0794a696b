"""Credential hygiene: a recognisable key, searched for everywhere it must never appear.

Every test runs with logging at DEBUG for every logger (aiohttp's included) and then searches
the log records, the reprs of what the user holds (client, config, handles, results,
summaries), each exception's text, repr, attributes and full traceback (causes and groups
included), every file written (outputs and the journal), and the CLI's output. The key is
in ``id:secret`` form, and each half is searched for on its own too.

Where the key may go: the queue/REST origin only. The emulator counts requests that reach its
CDN with credentials (``cdn_auth_requests``); a recording origin stands for anywhere else.
"""

from __future__ import annotations

import functools
import logging
import socket
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from fal_edit_async import (
    APIError,
    AsyncClient,
    AuthError,
    BudgetExceededError,
    DownloadError,
    EditImageInput,
    FalEditError,
    InputError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    Limits,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from fal_edit_async._cli import main
from fal_edit_async.emulator import Emulator, JobState

from .conftest import client_for
from .test_cli_support import emulator_thread, write_images
from .test_hostile_server import Recorder, recording_origin

KEY_ID = "fal-key-id-5ec4e7-1d0n7-1e4k"
KEY_SECRET = "SeCrEt-9f8e7d6c5b4a-d0-n0t-l0g-me"
#: The key as ``FAL_KEY_ID:FAL_KEY_SECRET``, as fal-client joins them.
KEY = f"{KEY_ID}:{KEY_SECRET}"
SECRETS = (KEY, KEY_ID, KEY_SECRET)


def leaks(text: str) -> list[str]:
    """The secrets that appear in ``text``."""
    return [s for s in SECRETS if s in text]


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Everything an exception shows: its traceback (with causes and groups), and for it and
    every exception linked to it, the repr and the repr of each attribute."""
    yield "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield repr(current)
        yield repr(vars(current))
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)


def assert_hidden(*things: object) -> None:
    """No secret in the str or repr of any thing, nor anywhere an exception shows."""
    for thing in things:
        texts = [str(thing), repr(thing)]
        if isinstance(thing, BaseException):
            texts += list(exception_texts(thing))
        for text in texts:
            assert [] == leaks(text), text[:400]


def assert_files_hidden(folder: Path) -> None:
    """No secret in the bytes of any file under ``folder`` (outputs, journal, its WAL)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        assert [] == [s for s in SECRETS if s.encode() in data], path


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, captured; after the test, no record may hold a secret."""
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "aiohttp.client", "aiohttp.server", "aiohttp.access", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog
    for record in caplog.records:
        assert [] == leaks(record.getMessage()), record
        assert [] == leaks(repr(record.args) + repr(vars(record))), record
    assert [] == leaks(caplog.text)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator that accepts only KEY, so every call is proven to carry it."""
    async with Emulator(api_key=KEY, workers=4, fast_images=True) as emulator:
        yield emulator
        assert 0 == emulator.counters.cdn_auth_requests  # the key never reached the CDN
        assert 0 == emulator.counters.unauthorized


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[AsyncClient]:
    """A client holding KEY, uploading every local file (so the REST initiate gets the key)."""
    async with client_for(emu, api_key=KEY, limits=Limits(inline_bytes=0)) as c:
        yield c


@pytest.fixture
def edit_input(png_data_uri: str) -> EditImageInput:
    """A valid edit."""
    return EditImageInput(prompt="make it pixel art", image_urls=[png_data_uri])


async def caught(call: Any, kind: type[BaseException]) -> BaseException:
    """Await ``call()`` and return the exception of type ``kind`` it raised."""
    with pytest.raises(kind) as info:
        await call()
    return info.value


async def test_successful_work_shows_no_key(
    debug_logs: pytest.LogCaptureFixture,
    emu: Emulator,
    client: AsyncClient,
    png_bytes: bytes,
    tmp_path: Path,
) -> None:
    """Edits, uploads, downloads and a journaled batch: no key in logs, reprs or files."""
    (photo,) = write_images(tmp_path / "in", "photo.png")
    edit = EditImageInput(prompt="white background", image_urls=[photo], num_images=2)
    handle = await client.submit(edit)
    output = await handle.result()
    files = await client.download(output, tmp_path / "out")
    items = [("a", edit), ("b", attrs.evolve(edit, prompt="studio light"))]
    journal = tmp_path / "batch.journal"
    async with client.edit_many(items, download_to=tmp_path / "out", journal=journal) as batch:
        results = [r async for r in batch]

    assert all(r.ok for r in results) and 1 == emu.counters.upload_puts
    assert_hidden(client, client.config, client.config.credentials, client._core, handle)
    assert_hidden(output, *files, *results, batch.summary(), emu, emu.jobs)
    assert_files_hidden(tmp_path)


async def test_failures_of_every_kind_show_no_key(
    debug_logs: pytest.LogCaptureFixture,
    emu: Emulator,
    client: AsyncClient,
    edit_input: EditImageInput,
    tmp_path: Path,
) -> None:
    """Every error the client raises, text, repr, attributes and traceback, is free of the key."""
    errors: list[BaseException] = []

    async def expect(kind: type[BaseException], route: str | None, fault: str, **kw: Any) -> None:
        if route is not None:
            emu.schedule_fault(route, fault, **kw)
        errors.append(await caught(lambda: client.edit(edit_input), kind))

    await expect(RateLimitError, "submit", "rate_limit", times=4, retry_after=0)
    await expect(ServerError, "submit", "server_error")
    await expect(TransportError, "submit", "connection_reset", after_enqueue=True)
    await expect(ProtocolError, "result", "invalid_json")
    await expect(AuthError, "result", "echo_key")  # a server quoting the key back
    await expect(JobFailedError, "job", "model_failure", error_type="validation")
    await expect(JobFailedError, "job", "model_failure", error_type="runner_server_error")
    await expect(JobCancelledError, "job", "model_failure", error_type="client_cancelled")
    await expect(APIError, "stream", "redirect", location="http://127.0.0.1:9/x")
    errors.append(await caught(lambda: client.status("no-such-request"), NotFoundError))
    with pytest.raises(InputError) as invalid:
        EditImageInput(prompt="", image_urls=["x"])
    errors.append(invalid.value)
    output = await client.edit(edit_input)
    emu.schedule_fault("download", "truncated_download", times=4)
    group = await caught(lambda: client.download(output, tmp_path), ExceptionGroup)
    assert isinstance(group, ExceptionGroup) and isinstance(group.exceptions[0], DownloadError)
    errors.append(group)
    async with client.edit_many([edit_input], budget=0.001) as batch:
        (refused,) = [r async for r in batch]
    assert isinstance(refused.error, BudgetExceededError)

    assert_hidden(*errors, refused)
    assert all(isinstance(e, FalEditError | ExceptionGroup) for e in errors)


async def test_wrong_key_and_unreachable_host_show_no_key(
    debug_logs: pytest.LogCaptureFixture, edit_input: EditImageInput
) -> None:
    """A refused key and a host that refuses connections: the errors never quote the key."""
    async with Emulator(api_key="some-other-key") as emulator:
        async with client_for(emulator, api_key=KEY) as client:
            refused = await caught(lambda: client.edit(edit_input), AuthError)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    nowhere = f"http://127.0.0.1:{closed_port}"
    retry = RetryPolicy(wait=False, max_attempts=2)
    async with AsyncClient(api_key=KEY, queue_url=nowhere, rest_url=nowhere, retry=retry) as c:
        unreachable = await caught(lambda: c.edit(edit_input), TransportError)

    assert_hidden(refused, unreachable)


async def test_timeouts_and_cancels_show_no_key(
    debug_logs: pytest.LogCaptureFixture,
    emu: Emulator,
    client: AsyncClient,
    edit_input: EditImageInput,
) -> None:
    """A deadline, a cancelled caller and a batch left early: no key anywhere, jobs cancelled."""
    emu.hold_jobs()
    timed_out = await caught(lambda: client.edit(edit_input, timeout=0.05), JobTimeoutError)

    async def running(prompt: str) -> None:
        """Wait until the job with ``prompt`` runs (held at the job gate) and is followed."""
        await emu.wait_until(
            lambda: any(
                j.input["prompt"] == prompt and j.state is JobState.IN_PROGRESS and j.open_streams
                for j in emu.jobs.values()
            )
        )

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.edit, attrs.evolve(edit_input, prompt="cancel me"))
            await running("cancel me")
            scope.cancel()
    async with client.edit_many([attrs.evolve(edit_input, prompt="left early")]) as batch:
        await running("left early")
    handle = await client.submit(attrs.evolve(edit_input, prompt="cancelled by hand"))
    outcome = await handle.cancel()

    for job in list(emu.jobs.values()):
        await emu.wait_for_state(job.request_id, "COMPLETED")
        assert "client_cancelled" == job.error_type
    assert_hidden(timed_out, batch.summary(), handle, outcome)


async def test_key_goes_only_to_the_queue_origin(
    debug_logs: pytest.LogCaptureFixture,
    emu: Emulator,
    client: AsyncClient,
    edit_input: EditImageInput,
    png_bytes: bytes,
    tmp_path: Path,
) -> None:
    """Redirects and foreign job URLs point elsewhere: that origin never receives the key."""
    async with recording_origin(png_bytes) as elsewhere:
        emu.schedule_fault("submit", "foreign_urls", location=elsewhere.url)
        emu.schedule_fault("download", "redirect", location=f"{elsewhere.url}/file.png")
        async with client.edit_many([("one", edit_input)], download_to=tmp_path) as batch:
            assert all([r.ok async for r in batch])  # the wrong file there is retried here
        for route in ("status", "result"):
            emu.schedule_fault(route, "redirect", location=f"{elsewhere.url}/{route}")
        with pytest.raises(APIError):
            await client.edit(attrs.evolve(edit_input, prompt="three"))

    assert_no_key_at(elsewhere)
    assert 0 == emu.counters.cdn_auth_requests


def assert_no_key_at(origin: Recorder) -> None:
    """The recording origin got requests, none with the key or an Authorization header."""
    assert origin.requests
    assert not any(origin.saw(secret) for secret in SECRETS)
    assert all("Authorization" not in headers for _, _, headers in origin.requests)


# -- the command line -----------------------------------------------------------------------


def test_cli_output_shows_no_key(
    debug_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """fal-edit edit, succeeding and failing, with --debug tracebacks: no key in its output."""
    write_images(tmp_path / "in", "cat.png", "dog.png")
    out, journal = tmp_path / "out", tmp_path / "cli.journal"
    argv = ["edit", "pixel art", str(tmp_path / "in"), "--out", str(out)]
    with emulator_thread(monkeypatch, api_key=KEY) as (portal, emu):
        assert 0 == main([*argv, "--json", "--journal", str(journal)])
        portal.call(functools.partial(emu.schedule_fault, "job", "model_failure", times=2))
        assert 1 == main([*argv, "--debug"])
        assert 1 == main(["status", "no-such-request", "--debug"])
    with emulator_thread(monkeypatch, api_key="another-key"):
        monkeypatch.setenv("FAL_KEY", KEY)
        assert 2 == main([*argv, "--debug"])
    captured = capsys.readouterr()

    assert [] == leaks(captured.out + captured.err)
    assert "FAL_KEY" in captured.err
    assert_files_hidden(tmp_path)
