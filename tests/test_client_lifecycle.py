"""A client's life and its arguments: entered once, closed for good, options checked at the call.

Everything here is refused before a single request is sent, which the in-memory transport
proves by counting what reached it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    ImageFile,
    InputError,
    Limits,
    MockTransport,
    Request,
    Response,
    RetryPolicy,
    ServerError,
)

INPUT = EditImageInput(prompt="p", image_urls=["https://cdn.example/in.png"])


class Counting:
    """A handler that counts requests and answers 500 to each."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, request: Request) -> Response:
        self.requests += 1
        return Response(status=500)


@pytest.fixture
def handler() -> Counting:
    """A fresh counting handler."""
    return Counting()


@pytest.fixture
def client(handler: Counting) -> AsyncClient:
    """A client on the counting handler (not entered)."""
    return AsyncClient(
        api_key="k",
        queue_url="https://q.example",
        retry=RetryPolicy(wait=False),
        transport=MockTransport(handler),
    )


async def test_entering_twice_is_refused(client: AsyncClient) -> None:
    """A client is entered once; a second ``async with`` is a bug, said at once."""
    async with client:
        with pytest.raises(RuntimeError, match="already entered"):
            await client.__aenter__()


async def test_a_closed_client_cannot_be_entered_or_used(
    client: AsyncClient, handler: Counting
) -> None:
    """After aclose(), entering and calling both raise; a second aclose() does nothing."""
    await client.aclose()
    await client.aclose()

    with pytest.raises(RuntimeError):
        await client.__aenter__()
    with pytest.raises(RuntimeError, match="closed"):
        await client.status("r1")
    assert 0 == handler.requests


async def test_a_closed_client_refuses_a_download_that_needs_no_request(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A data: URI download never reaches the core; a closed client refuses it all the same."""
    await client.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await client.download([ImageFile(url=png_data_uri)], tmp_path)
    assert [] == list(tmp_path.iterdir())


async def test_handles_outlive_nothing(client: AsyncClient, handler: Counting) -> None:
    """A handle made before the client closed refuses to send once it has."""
    handle = client.handle("r1")
    await client.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await handle.status()
    assert 0 == handler.requests


def test_config_is_read_only(client: AsyncClient) -> None:
    """The client's configuration can be read, not replaced."""
    with pytest.raises(AttributeError):
        client.config = client.config  # type: ignore[misc]
    assert not hasattr(client, "transport")
    assert not hasattr(client, "stats")
    assert not hasattr(client, "uploader")


@pytest.mark.parametrize(
    ("call", "name"),
    [
        pytest.param(lambda c: c.submit(INPUT, priorty="low"), "priorty", id="submit"),
        pytest.param(lambda c: c.edit(INPUT, webhook="x"), "webhook", id="edit"),
    ],
)
async def test_an_unknown_option_is_refused_before_sending(
    client: AsyncClient, handler: Counting, call: Any, name: str
) -> None:
    """A misspelt option raises TypeError (with a suggestion) and sends nothing."""
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        await call(client)
    assert 0 == handler.requests


def test_edit_many_refuses_an_unknown_option_at_the_call(client: AsyncClient) -> None:
    """``edit_many(items, priorty=...)`` fails at once, not as every item's failure later."""
    with pytest.raises(TypeError, match="did you mean 'priority'"):
        client.edit_many([INPUT], priorty="low")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        pytest.param({"concurrency": 0}, "concurrency", id="concurrency-zero"),
        pytest.param({"concurrency": True}, "concurrency", id="concurrency-bool"),
        pytest.param({"concurrency": 2.5}, "concurrency", id="concurrency-float"),
        pytest.param({"downloads": 0}, "downloads", id="downloads-zero"),
        pytest.param({"job_retries": -1}, "job_retries", id="retries-negative"),
        pytest.param({"budget": math.nan}, "budget", id="budget-nan"),
        pytest.param({"budget": math.inf}, "budget", id="budget-inf"),
        pytest.param({"budget": -1}, "budget", id="budget-negative"),
        pytest.param({"budget": "5"}, "budget", id="budget-string"),
        pytest.param({"concurrency": 600}, "concurrency", id="over-the-pool"),
    ],
)
def test_bad_batch_settings_are_input_errors(
    client: AsyncClient, handler: Counting, settings: dict[str, Any], field: str
) -> None:
    """Impossible batch settings raise InputError naming the setting, before anything runs."""
    with pytest.raises(InputError) as caught:
        client.edit_many([INPUT], **settings)
    assert field == caught.value.field
    assert 0 == handler.requests


def test_defaults_use_is_none_not_truthiness(client: AsyncClient) -> None:
    """``budget=0`` is a budget of nothing, not "no budget"; the call is accepted."""
    client.edit_many([INPUT], budget=0)
    AsyncClient(api_key="k", limits=Limits(inline_bytes=0), transport=MockTransport(Counting()))


async def test_statistics_are_a_typed_snapshot(client: AsyncClient) -> None:
    """statistics() counts requests and retries by kind, and does not change afterwards."""
    before = client.statistics()
    with pytest.raises(ServerError):
        await client.status("r1")
    after = client.statistics()

    assert 0 == before.requests
    assert after.requests == after.retries.server_error + 1
    assert after.retries.total == after.retries.server_error
