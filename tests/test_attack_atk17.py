"""Attack 17: job URLs that pass for the queue origin but that no HTTP library reads alike.

A submit answer with ``http://evil@<queue host:port>/...`` (user info) was trusted: the origin
check compares scheme, host and port, which are the queue's. The core then added the key and
aiohttp refused to combine it with the URL's credentials: a bare ``ValueError`` escaped
``edit()``, and the paid job's id with it; a journal kept those URLs, so every rerun failed the
same way. A backslash (``http://evil\\@queue/``) or a fragment (``http://queue/x#@evil/``) made
the check and the transport part ways too. Now such URLs are not trusted: they are rebuilt on
the queue origin, from a receipt and from a journal row alike, and a URL aiohttp refuses is a
:class:`TransportError`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from fal_edit_async import AsyncClient, EditImageInput, Journal, JournalError, TransportError
from fal_edit_async._endpoint import EndpointId
from fal_edit_async._models import JobUrls
from fal_edit_async._protocol import origin, trusted_job_urls
from fal_edit_async._transport import AiohttpTransport, Request
from fal_edit_async.emulator import Emulator

from ._postgres import execute
from .conftest import client_for
from .test_ledger import most_billed, run, states

QUEUE = "http://127.0.0.1:9"
EDIT = EndpointId.parse("fal-ai/gpt-image-1/edit-image")


def _tricks(host: str) -> list[str]:
    return [f"http://evil@{host}", f"http://evil\\@{host}", f"http://{host}/x#@evil.example"]


@pytest.mark.parametrize("base", _tricks("127.0.0.1:9"), ids=["userinfo", "backslash", "fragment"])
def test_a_url_that_parsers_read_apart_is_not_trusted(base: str) -> None:
    """Each trick is rebuilt on the queue origin; a plain URL on it is kept."""
    tricked = JobUrls(
        request_id="r1",
        status_url=f"{base}/requests/r1/status",
        response_url=f"{base}/requests/r1",
        cancel_url=f"{base}/requests/r1/cancel",
    )
    plain = JobUrls(
        request_id="r1",
        status_url=f"{QUEUE}/fal-ai/gpt-image-1/requests/r1/status",
        response_url=f"{QUEUE}/fal-ai/gpt-image-1/requests/r1",
        cancel_url=f"{QUEUE}/fal-ai/gpt-image-1/requests/r1/cancel",
    )

    rebuilt = trusted_job_urls(QUEUE, EDIT, tricked)

    assert rebuilt.status_url == f"{QUEUE}/fal-ai/gpt-image-1/requests/r1/status"
    assert plain == trusted_job_urls(QUEUE, EDIT, plain)


def test_user_info_gives_no_origin() -> None:
    """The key is never sent to a URL with user info, whatever host it names."""
    assert ("", "") == origin("http://evil@127.0.0.1:9/x")
    assert ("", "") == origin("http://evil\\@127.0.0.1:9/x")
    assert ("http", "127.0.0.1:9") == origin("http://127.0.0.1:9/x")


@pytest.mark.parametrize("trick", [0, 1, 2], ids=["userinfo", "backslash", "fragment"])
async def test_edit_survives_a_receipt_with_tricked_urls(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, trick: int
) -> None:
    """The job fal queued (and bills) is followed on rebuilt URLs to its result."""
    host = emulator.queue_url.removeprefix("http://")
    emulator.schedule_fault("submit", "foreign_urls", location=_tricks(host)[trick])

    output = await client.edit(edit_input)

    assert output.images
    assert 1 == emulator.counters.submits


async def test_a_journal_row_with_tricked_urls_is_re_attached_on_rebuilt_ones(
    png_data_uri: str, tmp_path: Path
) -> None:
    """A journal an older version wrote, its row's URLs with user info: the rerun follows the
    job on URLs built on the queue origin, and pays nothing more."""
    journal = tmp_path / "j"
    item = EditImageInput(prompt="p", image_urls=[png_data_uri])
    async with Emulator(fast_images=True, cancel_running="ignore") as emu:
        emu.hold_jobs()
        async with client_for(emu) as client:
            with anyio.CancelScope() as scope:
                async with client.edit_many([("a", item)], journal=journal) as batch:
                    await emu.wait_in_flight(1)
                    await emu.wait_until(lambda: emu.counters.streams_opened >= 1)
                    scope.cancel()  # the batch is left; fal ignores the cancel, the job runs on
                    async for _ in batch:
                        pass
        (key,) = (await states(journal)).keys()
        host = emu.queue_url.removeprefix("http://")
        execute(
            journal,
            "UPDATE {items} SET status_url = ?, response_url = ?, cancel_url = ? WHERE key = ?",
            f"http://evil@{host}/x/status",
            f"http://evil@{host}/x",
            f"http://evil@{host}/x/cancel",
            key,
        )
        emu.release_jobs()
        async with client_for(emu) as client:
            (result,) = await run(client, [("a", item)], journal=journal)

        assert result.ok, result.error
        assert 1 == emu.counters.submits
        assert 1 == most_billed(emu)


async def test_a_request_aiohttp_refuses_is_a_transport_error(emulator: Emulator) -> None:
    """aiohttp's own ValueError (a key and credentials in the URL at once) is ours, typed."""
    host = emulator.queue_url.removeprefix("http://")
    transport = AiohttpTransport()
    request = Request(method="GET", url=f"http://evil@{host}/x", headers={"Authorization": "Key k"})
    try:
        with pytest.raises(TransportError, match="refused"):
            await transport.request(request)
    finally:
        await transport.aclose()


@pytest.fixture
def edit_input(png_data_uri: str) -> EditImageInput:
    """One edit of the test image."""
    return EditImageInput(prompt="p", image_urls=[png_data_uri])


# -- F3: an error that ends the group's transaction fails its own write only ---------------------


@pytest.mark.parametrize("kind", ["ABORT", "FAIL", "ROLLBACK"])
async def test_one_write_that_ends_the_transaction_fails_alone(tmp_path: Path, kind: str) -> None:
    """Ten writes in one group commit, one refused by a trigger. With ``RAISE(ROLLBACK)`` (as
    SQLite does itself on a full disk) the transaction is gone, savepoints and all: the nine
    others land anyway, and the tenth fails with its own error, not "no transaction"."""
    path = tmp_path / "j"
    async with Journal(path) as journal:
        await journal._upsert("seed", {"state": "pending"})
    execute(
        path,
        "CREATE TRIGGER boom BEFORE INSERT ON {items} WHEN NEW.key = 'k5' "
        f"BEGIN SELECT RAISE({kind}, 'boom'); END",
    )
    async with Journal(path) as journal:

        async def write(i: int) -> str:
            try:
                values = {"state": "submitted", "request_id": f"r{i}"}
                await journal._upsert(f"k{i}", values, durable=i % 3 == 0)
            except JournalError as exc:
                return str(exc)
            return "ok"

        results: dict[int, str] = {}

        async def one(i: int) -> None:
            results[i] = await write(i)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
    with sqlite3.connect(path) as db:
        landed = {key for (key,) in db.execute("SELECT key FROM items")}

    assert {f"k{i}" for i in range(10) if i != 5} | {"seed"} == landed
    assert all(results[i] == "ok" for i in range(10) if i != 5), results
    assert "boom" in results[5]
