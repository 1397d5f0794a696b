"""Where the async client runs: asyncio only, one loop per client, a key before anything.

Each misuse must be a clear typed error before anything is sent, not a failure deep inside
aiohttp ("no running event loop", "attached to a different loop", a DNS error).
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    EventLoopError,
    InputError,
    MissingCredentialsError,
    MockTransport,
    Request,
    Response,
)

QUEUE = "https://queue.example"
STATUS = {"status": "IN_QUEUE", "queue_position": 0}


class Recorder:
    """An in-memory fal that records every request it is sent."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(status=200, json=STATUS)


def mock_client(recorder: Recorder, **options: Any) -> AsyncClient:
    return AsyncClient(api_key="k", queue_url=QUEUE, transport=MockTransport(recorder), **options)


def test_under_trio_the_error_names_asyncio() -> None:
    """anyio.run(..., backend="trio") raises EventLoopError naming asyncio; nothing is sent."""
    pytest.importorskip("trio")
    recorder = Recorder()

    async def main() -> None:
        async with mock_client(recorder) as fal:
            await fal.status("r1")

    with pytest.raises(EventLoopError, match="asyncio only"):
        anyio.run(main, backend="trio")
    assert [] == recorder.requests


def test_under_trio_each_verb_refuses_before_sending(png_bytes: bytes) -> None:
    """edit, submit, download and edit_many each raise EventLoopError under trio."""
    pytest.importorskip("trio")
    recorder = Recorder()
    fal = mock_client(recorder)
    inp = EditImageInput(prompt="p", image_urls=[png_bytes])
    errors: list[str] = []

    async def main() -> None:
        calls: list[Any] = [
            lambda: fal.edit(inp),
            lambda: fal.submit(inp),
            lambda: fal.status("r1"),
            lambda: fal.download([], "out"),
        ]
        for call in calls:
            try:
                await call()
            except EventLoopError as exc:
                errors.append(str(exc))
        try:
            async with fal.edit_many([inp]):
                pass
        except EventLoopError as exc:
            errors.append(str(exc))

    anyio.run(main, backend="trio")
    assert 5 == len(errors)
    assert [] == recorder.requests


def test_a_client_used_by_two_asyncio_runs_says_so() -> None:
    """A module-level client used by a second asyncio.run() raises EventLoopError."""
    recorder = Recorder()
    fal = mock_client(recorder)
    asyncio.run(fal.status("r1"))

    with pytest.raises(EventLoopError, match="another asyncio event loop"):
        asyncio.run(fal.status("r1"))
    assert 1 == len(recorder.requests)
    asyncio.run(fal.aclose())  # closing needs no request: allowed from anywhere


def test_entering_on_another_loop_fails_at_the_async_with() -> None:
    """The check runs at ``async with`` too, before any request."""
    recorder = Recorder()
    fal = mock_client(recorder)
    asyncio.run(fal.status("r1"))

    async def enter() -> None:
        async with fal:
            pass

    with pytest.raises(EventLoopError):
        asyncio.run(enter())


def test_a_missing_key_names_fal_key() -> None:
    """No FAL_KEY and no api_key: MissingCredentialsError (an InputError) naming FAL_KEY."""
    with pytest.raises(MissingCredentialsError, match="FAL_KEY") as caught:
        AsyncClient(queue_url=QUEUE, transport=MockTransport(Recorder()))
    assert isinstance(caught.value, InputError)
    assert "api_key" == caught.value.field


def test_a_key_from_the_environment_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET) satisfies the check."""
    monkeypatch.setenv("FAL_KEY_ID", "id")
    monkeypatch.setenv("FAL_KEY_SECRET", "secret")
    assert AsyncClient(queue_url=QUEUE).config.credentials is not None


async def test_edit_and_submit_take_the_json_mapping(png_data_uri: str) -> None:
    """The mapping is checked like EditImageInput: a bad one is an InputError, unsent."""
    recorder = Recorder()
    async with mock_client(recorder) as fal:
        with pytest.raises(InputError, match="num_images"):
            await fal.submit({"prompt": "p", "image_urls": [png_data_uri], "num_images": 9})
        with pytest.raises(InputError, match="image_urls"):
            await fal.edit({"prompt": "p"})
        with pytest.raises(InputError, match="input"):
            await fal.edit("a prompt")  # type: ignore[arg-type]
    assert [] == recorder.requests
