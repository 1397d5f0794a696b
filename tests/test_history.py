"""Walking fal's request history for a lost submit, against the emulator's history."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from fal_edit_async import AsyncClient
from fal_edit_async._history import find_submits, walk_history
from fal_edit_async.emulator import Emulator

from .conftest import client_for, make_png

ENDPOINT = "fal-ai/gpt-image-1/edit-image"


def _input(prompt: str) -> dict[str, Any]:
    uri = "data:image/png;base64," + base64.b64encode(make_png()).decode()
    return {"prompt": prompt, "image_urls": [uri]}


async def _send(emu: Emulator, body: dict[str, Any], **headers: str) -> str:
    auth = {"Authorization": f"Key {emu.api_key}", **headers}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(emu.url_for(ENDPOINT), json=body) as resp:
            assert 200 == resp.status
            request_id: str = (await resp.json())["request_id"]
            return request_id


def _since() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=5)


async def test_a_lost_submit_is_found_by_its_exact_input(emulator: Emulator) -> None:
    """Among 250 requests (three pages), the one with the same input is the match."""
    for i in range(250):
        await _send(emulator, _input(f"other {i}"))
    wanted = await _send(emulator, _input("the lost one"))
    async with client_for(emulator) as client:
        found = await find_submits(client._core, ENDPOINT, _input("the lost one"), sent_at=_since())
    assert found.complete
    assert 251 == found.seen
    assert [wanted] == [m.request_id for m in found.matches]


async def test_the_same_input_sent_twice_gives_two_matches(emulator: Emulator) -> None:
    """Two jobs of one input are both reported (a caller calls that ambiguous)."""
    ids = {await _send(emulator, _input("twice")) for _ in range(2)}
    async with client_for(emulator) as client:
        found = await find_submits(client._core, ENDPOINT, _input("twice"), sent_at=_since())
    assert (True, ids) == (found.complete, {m.request_id for m in found.matches})


async def test_no_match_in_a_complete_walk(emulator: Emulator) -> None:
    """A walk of every page that finds nothing says so, completely."""
    await _send(emulator, _input("something else"))
    async with client_for(emulator) as client:
        found = await find_submits(client._core, ENDPOINT, _input("never sent"), sent_at=_since())
    assert (True, ()) == (found.complete, found.matches)


@pytest.mark.parametrize(
    "kind", ["history_loop", "history_no_cursor", "history_no_payloads", "history_foreign"]
)
async def test_a_lying_history_never_proves_absence(emulator: Emulator, kind: str) -> None:
    """A cursor loop, more without a cursor, or dropped payloads make the walk incomplete;
    a foreign item is skipped (and the walk still finds the real match)."""
    for i in range(120):
        await _send(emulator, _input(f"n{i}"))
    wanted = await _send(emulator, _input("lost"))
    emulator.schedule_fault("history", kind, times=2)
    async with client_for(emulator) as client:
        found = await find_submits(client._core, ENDPOINT, _input("lost"), sent_at=_since())
    if kind == "history_foreign":
        assert (True, [wanted]) == (found.complete, [m.request_id for m in found.matches])
    else:
        assert not found.complete
        assert found.reason


async def test_unstored_payloads_make_the_walk_incomplete(emulator: Emulator) -> None:
    """A request sent with ``X-Fal-Store-IO: 0`` could be the lost one: nothing is proven."""
    await _send(emulator, _input("lost"), **{"X-Fal-Store-IO": "0"})
    async with client_for(emulator) as client:
        found = await find_submits(client._core, ENDPOINT, _input("lost"), sent_at=_since())
    assert (False, ()) == (found.complete, found.matches)


async def test_a_failing_history_is_incomplete(emulator: Emulator) -> None:
    """fal's 5xx on every try is no proof of absence."""
    emulator.schedule_fault("history", "server_error", times=10)
    async with client_for(emulator) as client:
        found = await find_submits(client._core, ENDPOINT, _input("x"), sent_at=_since())
    assert not found.complete


async def test_the_window_starts_at_sent_at_minus_skew(emulator: Emulator) -> None:
    """Requests sent before the window are not read."""
    await _send(emulator, _input("old"))
    async with client_for(emulator) as client:
        later = datetime.now(UTC) + timedelta(seconds=1)
        items = [i async for i in walk_history(client._core, ENDPOINT, start=later)]
    assert [] == items


async def test_the_key_goes_to_the_api_origin_only_when_configured() -> None:
    """FAL_API_URL joins the origins the key may be sent to."""
    client = AsyncClient(api_key="k", api_url="http://127.0.0.1:1")
    assert client._core.may_authorize("http://127.0.0.1:1/v1/models/requests/by-endpoint")
    assert not client._core.may_authorize("http://127.0.0.1:2/v1/models/requests/by-endpoint")
    await client.aclose()
