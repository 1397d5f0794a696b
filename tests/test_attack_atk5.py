"""Attacks (round atk5) on 39d6118: closing the client under a running batch, the clash
clean-up by (device, inode), and ``Core.prepare()`` before each shielded submit POST. Four
were breaks, now fixed: a cancel under way when the client closes is waited for and lands; a
close during uploads is not_submitted, not an internal error; the clean-up knows a file by
size and mtime too, so one rewritten in place or made on a reused inode is kept. The rest
are claims that held under an attack not covered elsewhere."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    EditItem,
    InternalError,
    ItemResult,
    ItemState,
    Limits,
    RetryPolicy,
)
from fal_edit_async._transport import AiohttpTransport, Request, Response, StreamResponse
from fal_edit_async.emulator import Emulator

from .conftest import client_for, make_png

#: Retries that really wait out a short Retry-After (the emulator's 429s carry one).
WAITING_RETRY = RetryPolicy(wait=True, max_attempts=4, base_delay=0.05, max_delay=0.3)


def _items(png_data_uri: str, n: int) -> list[EditItem]:
    return [
        EditItem(input=EditImageInput(prompt=f"a{k}", image_urls=[png_data_uri]), name=f"a{k}")
        for k in range(n)
    ]


async def _closed_once(
    client: AsyncClient, items: list[EditItem], held: Callable[[], Awaitable[object]], **batch: Any
) -> list[ItemResult]:
    """Run ``items`` as a batch (3 at once) on ``client``; once ``held()`` returns, close the
    client. What the batch yielded; 30 s is a hang backstop, not a measurement."""
    results: list[ItemResult] = []
    async with client:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    async with client.edit_many(items, concurrency=3, **batch) as b:
                        results.extend([r async for r in b])

                tg.start_soon(run)
                await held()
                await client.aclose()
    return results


def _cancel_429s(emulator: Emulator) -> int:
    return sum(1 for _, m, p, s in emulator.counters.request_log if "cancel" in p and s == 429)


def _internal(results: list[ItemResult]) -> list[str]:
    return [r.key for r in results if isinstance(r.error, InternalError)]


# -- 1. the client closed under a running batch ---------------------------------------------


async def test_leaving_a_batch_and_closing_the_client_together_still_cancels_its_jobs(
    emulator: Emulator, png_data_uri: str
) -> None:
    """The batch is left early (its scope cancelled) with 2 jobs followed; each leaving cancel
    is answered 429 once; while the client waits out the Retry-After, another task closes the
    client. Both jobs must still end cancelled on fal, none billed."""
    emulator.hold_jobs()
    emulator.schedule_fault("cancel", "rate_limit", times=2, retry_after=0.3)
    client = client_for(emulator, retry=WAITING_RETRY)
    results: list[ItemResult] = []
    async with client:
        with anyio.fail_after(30):  # a hang backstop, not a measurement
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def run() -> None:
                    with scope:
                        async with client.edit_many(
                            _items(png_data_uri, 2), concurrency=2
                        ) as batch:
                            results.extend([r async for r in batch])

                tg.start_soon(run)
                await emulator.wait_in_flight(2)
                await emulator.wait_until(
                    lambda: sum(j.open_streams for j in emulator.jobs.values()) == 2
                )
                scope.cancel()
                await emulator.wait_until(lambda: _cancel_429s(emulator) >= 2)
                await client.aclose()
    emulator.release_jobs()
    await emulator.wait_until(lambda: emulator.counters.in_flight == 0)
    assert 0 == emulator.counters.billed, "a job the batch left ran on, unwatched, and billed"


async def test_an_on_close_cancel_answered_429_is_retried_and_lands(
    emulator: Emulator, png_data_uri: str
) -> None:
    """The client closed under a batch following 3 jobs; every on-close cancel is answered
    429 once. The hooks wait out the Retry-After (within Timeouts.cancel) and cancel all 3:
    none billed, no internal error. A second close from another task meanwhile is harmless."""
    emulator.hold_jobs()
    emulator.schedule_fault("cancel", "rate_limit", times=3, retry_after=0.2)
    client = client_for(emulator, retry=WAITING_RETRY)
    results: list[ItemResult] = []
    async with client:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    async with client.edit_many(_items(png_data_uri, 3), concurrency=3) as batch:
                        results.extend([r async for r in batch])

                tg.start_soon(run)
                await emulator.wait_in_flight(3)
                await emulator.wait_until(
                    lambda: sum(j.open_streams for j in emulator.jobs.values()) == 3
                )
                tg.start_soon(client.aclose)
                await emulator.wait_until(lambda: _cancel_429s(emulator) >= 3)
                await client.aclose()  # the second close, while the hooks wait out the 429s
    emulator.release_jobs()
    await emulator.wait_until(lambda: emulator.counters.in_flight == 0)
    assert 0 == emulator.counters.billed
    assert 3 == len(results)
    assert [] == _internal(results)


async def test_closed_during_submit_429s_the_items_are_unsent_and_the_rerun_pays_once(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """With a journal: every submit is answered 429 (Retry-After 0.3 s) and the client is
    closed while the items wait it out. Nothing was queued: each item is not_submitted, and
    a rerun submits each exactly once."""
    journal = tmp_path / "j"
    items = _items(png_data_uri, 3)
    emulator.schedule_fault("submit", "rate_limit", times=3, retry_after=0.3)
    client = client_for(emulator, retry=WAITING_RETRY)
    results = await _closed_once(
        client,
        items,
        lambda: emulator.wait_until(lambda: emulator.counters.faults_injected["rate_limit"] >= 3),
        journal=journal,
    )
    assert 0 == emulator.counters.submits, "a submit left after the client was closed"
    assert {ItemState.NOT_SUBMITTED} == {r.state for r in results}
    async with (
        client_for(emulator) as again,
        again.edit_many(items, concurrency=3, journal=journal) as batch,
    ):
        rerun = [r async for r in batch]
    assert [] == [r.key for r in rerun if not r.ok]
    assert 3 == emulator.counters.submits
    assert max(emulator.counters.billed_by_input.values()) <= 1


async def test_closed_during_downloads_the_journal_rerun_delivers_without_paying_again(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """With a journal and downloads: the client closed while every download's body is held.
    No item ends with an internal error; the rerun fetches each output again, paying
    nothing more (each input billed once)."""
    journal, out = tmp_path / "j", tmp_path / "out"
    items = _items(png_data_uri, 3)
    emulator.hold_downloads()
    client = client_for(emulator)
    results = await _closed_once(
        client, items, lambda: emulator.wait_downloads_held(3), journal=journal, download_to=out
    )
    emulator.release_downloads()
    assert [] == _internal(results)
    async with (
        client_for(emulator) as again,
        again.edit_many(items, concurrency=3, journal=journal, download_to=out) as batch,
    ):
        rerun = [r async for r in batch]
    assert [] == [r.key for r in rerun if not r.ok]
    assert 3 == emulator.counters.submits
    assert max(emulator.counters.billed_by_input.values()) <= 1
    assert 3 == len(list(out.glob("a*.png")))


# -- 2. the clash clean-up by (device, inode) ----------------------------------------------


def _src(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(make_png(color=(9, 8, 7)))
    return path


async def _clash_after_first_image(
    emulator: Emulator, tmp_path: Path, meddle: object
) -> tuple[Path, ItemResult]:
    """A two-image item, downloads one at a time: once image 0 is published as photo_0.png
    and image 1's body is held, ``meddle(published)`` runs and another run takes
    photo_1.png, so image 1 clashes and the item gives up its names."""
    src, out = _src(tmp_path), tmp_path / "out"
    item = EditItem(input=EditImageInput(prompt="p", image_urls=[src], num_images=2), name="photo")
    emulator.hold_downloads()
    results: list[ItemResult] = []
    async with (
        client_for(emulator) as client,
        client.edit_many([item], download_to=out, downloads=1) as batch,
        anyio.create_task_group() as tg,
    ):

        async def consume() -> None:
            results.extend([r async for r in batch])

        tg.start_soon(consume)
        await emulator.wait_downloads_held(1)
        emulator.release_downloads(1)
        await emulator.wait_until(lambda: emulator.counters.downloads >= 1)
        await emulator.wait_downloads_held(1)
        published = out / "photo_0.png"
        assert published.exists()
        meddle(published)  # type: ignore[operator]
        (out / "photo_1.png").write_bytes(b"another run's file")
        emulator.release_downloads()
    (result,) = results
    return published, result


THEIRS = b"the other program's own file, saved over the output in place"


async def test_a_clash_never_deletes_a_file_another_writer_rewrote_in_place(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Most editors that do not rename save in place: O_TRUNC keeps the inode. The clash
    clean-up then sees "its" (device, inode) and deletes the other writer's bytes."""

    def rewrite(path: Path) -> None:
        with path.open("r+b") as f:
            f.truncate(0)
            f.write(THEIRS)

    published, result = await _clash_after_first_image(emulator, tmp_path, rewrite)
    assert result.ok
    assert published.exists(), "the other writer's file (rewritten in place) was deleted"
    assert THEIRS == published.read_bytes()


async def test_a_clash_never_deletes_a_file_recreated_on_a_reused_inode(
    emulator: Emulator, tmp_path: Path
) -> None:
    """``rm photo_0.png && cp mine.png photo_0.png``: on ext4 (and others) the new file
    usually gets the inode just freed, so (device, inode) says "published by this attempt"."""
    reused: list[bool] = []

    def recreate(path: Path) -> None:
        before = path.stat().st_ino
        path.unlink()
        path.write_bytes(THEIRS)
        reused.append(path.stat().st_ino == before)

    published, result = await _clash_after_first_image(emulator, tmp_path, recreate)
    if not reused[0]:
        pytest.skip("this file system gave the new file a new inode")
    assert result.ok
    assert published.exists(), "the other writer's new file (on a reused inode) was deleted"
    assert THEIRS == published.read_bytes()


async def test_a_clash_keeps_a_hard_link_another_writer_made_to_a_published_file(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Another writer hard-links photo_0.png under a name of its own: the clean-up removes
    only the name it published; the other writer's link and its bytes stay."""
    linked: list[tuple[Path, bytes]] = []

    def link(path: Path) -> None:
        theirs = path.parent / "kept-by-another-program.png"
        os.link(path, theirs)
        linked.append((theirs, path.read_bytes()))

    _, result = await _clash_after_first_image(emulator, tmp_path, link)
    assert result.ok
    ((theirs, data),) = linked
    assert data == theirs.read_bytes()


async def test_a_clash_keeps_a_file_another_writer_renamed_over_a_published_name(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Our published file renamed away and another writer's file renamed onto the name (a
    new inode): neither is deleted by the clean-up."""
    moved: list[Path] = []

    def swap(path: Path) -> None:
        ours = path.parent / "moved-away.png"
        os.rename(path, ours)
        moved.append(ours)
        side = path.parent / ".side"
        side.write_bytes(THEIRS)
        os.rename(side, path)

    published, result = await _clash_after_first_image(emulator, tmp_path, swap)
    assert result.ok
    assert THEIRS == published.read_bytes()
    assert moved[0].exists()


# -- 3. Core.prepare() before each shielded submit POST -------------------------------------


class _Plain:
    """A custom transport with no ``prepare``: only the Transport protocol's three calls."""

    def __init__(self, inner: AiohttpTransport) -> None:
        self._inner = inner
        self.requests = 0

    async def request(self, request: Request) -> Response:
        self.requests += 1
        return await self._inner.request(request)

    def stream(self, request: Request) -> AbstractAsyncContextManager[StreamResponse]:
        return self._inner.stream(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _StubbornPrepare(_Plain):
    """A transport whose ``prepare`` swallows the cancel of its caller (it shields itself),
    so a deadline fires during it and the shielded POST would follow late."""

    def __init__(self, inner: AiohttpTransport, entered: anyio.Event, go: anyio.Event) -> None:
        super().__init__(inner)
        self.entered, self.go = entered, go

    async def prepare(self) -> None:
        with anyio.CancelScope(shield=True):
            self.entered.set()
            await self.go.wait()


async def test_a_custom_transport_without_prepare_edits_and_runs_a_batch(
    emulator: Emulator, png_data_uri: str
) -> None:
    transport = _Plain(AiohttpTransport())
    async with client_for(emulator, transport=transport) as client:
        out = await client.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
        assert out.images
        async with client.edit_many(_items(png_data_uri, 3), concurrency=3) as batch:
            results = [r async for r in batch]
    assert [] == [r.key for r in results if not r.ok]
    assert transport.requests > 0
    assert 4 == emulator.counters.submits


async def test_a_deadline_during_a_shielding_prepare_leaves_no_unknown_job(
    emulator: Emulator, png_data_uri: str
) -> None:
    """edit(timeout=0.1) while the transport's prepare (shielded: a set-up that ignores
    cancels) takes 0.5 s: either no POST leaves, or the job it queued is cancelled; never
    one running on, billed."""

    class Slow(_Plain):
        async def prepare(self) -> None:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.5)  # the set-up's own duration, not synchronisation

    async with client_for(emulator, transport=Slow(AiohttpTransport())) as client:
        with pytest.raises(Exception) as caught:
            await client.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]), timeout=0.1)
    assert "Timeout" in type(caught.value).__name__
    emulator.release_jobs()
    await emulator.wait_until(lambda: emulator.counters.in_flight == 0)
    assert emulator.counters.submits == emulator.counters.cancels
    assert 0 == emulator.counters.billed


async def test_a_batch_cancelled_during_prepare_leaves_its_rows_unsent(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """A batch left (its scope cancelled) while its submits sit in a shielding prepare: any
    job that POST queued is cancelled, and a rerun pays each input at most once."""
    journal = tmp_path / "j"
    items = _items(png_data_uri, 2)
    entered, go = anyio.Event(), anyio.Event()
    transport = _StubbornPrepare(AiohttpTransport(), entered, go)
    async with client_for(emulator, transport=transport) as client:
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                with scope:
                    async with client.edit_many(items, concurrency=2, journal=journal) as b:
                        _ = [r async for r in b]

            tg.start_soon(run)
            await entered.wait()
            scope.cancel()
            go.set()
    await emulator.wait_until(lambda: emulator.counters.in_flight == 0)
    assert emulator.counters.submits == emulator.counters.cancels
    async with client_for(emulator) as again, again.edit_many(items, journal=journal) as batch:
        rerun = [r async for r in batch]
    assert [] == [r.key for r in rerun if not r.ok]
    assert max(emulator.counters.billed_by_input.values()) <= 1


# -- 1 (sync). the blocking Client closed from another thread under a batch -----------------


async def test_the_sync_client_closed_under_its_batch_cancels_the_jobs_and_ends_the_loop(
    emulator: Emulator, png_data_uri: str
) -> None:
    """A thread iterates a blocking ``Client.edit_many`` of 3 whose jobs are held; once the
    3 are followed another thread closes the client. The jobs are cancelled on fal (none
    billed) and the iterating thread's loop ends (an error or a stop), never hangs."""
    from fal_edit_async import Client, Timeouts

    from .conftest import FAST_POLLING, FAST_RETRY

    emulator.hold_jobs()
    client = Client(
        api_key=emulator.api_key,
        queue_url=emulator.queue_url,
        rest_url=emulator.rest_url,
        api_url=emulator.rest_url,
        retry=FAST_RETRY,
        polling=FAST_POLLING,
        timeouts=Timeouts(cancel=5.0),
    )
    seen: list[object] = []
    done = threading.Event()

    def iterate() -> None:
        try:
            for result in client.edit_many(_items(png_data_uri, 3), concurrency=3):
                seen.append(result)
        except BaseException as exc:  # the outcome under test: any end at all
            seen.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=iterate, daemon=True)
    worker.start()
    try:
        await emulator.wait_in_flight(3)
        await emulator.wait_until(lambda: sum(j.open_streams for j in emulator.jobs.values()) == 3)
        await anyio.to_thread.run_sync(client.close)
        ended = await anyio.to_thread.run_sync(done.wait, 10.0)
    finally:
        emulator.release_jobs()
    assert ended, "the thread iterating the batch still waits after the client closed"
    await emulator.wait_until(lambda: emulator.counters.in_flight == 0)
    assert 0 == emulator.counters.billed
    assert [] == [r for r in seen if isinstance(getattr(r, "error", None), InternalError)]


# -- 1 (uploads). closed while the inputs are being uploaded -------------------------------


async def _close_during_uploads(
    emulator: Emulator, tmp_path: Path
) -> tuple[list[EditItem], Path, list[ItemResult]]:
    """Files uploaded (inline_bytes=0), each upload held by a slow answer; the client is
    closed under them. Returns the items, the journal and what the batch yielded."""
    folder = tmp_path / "in"
    folder.mkdir()
    items = []
    for k in range(3):
        path = folder / f"u{k}.png"
        path.write_bytes(make_png(color=(k, 1, 2)))
        items.append(EditItem(input=EditImageInput(prompt="p", image_urls=[path]), name=f"u{k}"))
    journal = tmp_path / "j"
    emulator.schedule_fault("upload", "slow_response", times=3, delay=20.0)
    emulator.schedule_fault("storage", "slow_response", times=3, delay=20.0)
    client = client_for(emulator, limits=Limits(inline_bytes=0))
    results = await _closed_once(client, items, lambda: emulator.wait_slow_held(1), journal=journal)
    emulator.clear_faults()  # the rerun's uploads are answered at once
    emulator.release_slow()
    return items, journal, results


async def test_items_closed_during_their_uploads_are_not_submitted_not_internal_errors(
    emulator: Emulator, tmp_path: Path
) -> None:
    """guarantees (39d6118): items whose submit the closed client refused are not_submitted;
    none ends with an internal error. Closed while the inputs upload: nothing was sent."""
    _, _, results = await _close_during_uploads(emulator, tmp_path)
    assert 0 == emulator.counters.submits
    assert 3 == len(results)
    assert [] == _internal(results)
    assert {ItemState.NOT_SUBMITTED} == {r.state for r in results}


async def test_closed_during_uploads_the_journal_rerun_submits_each_item_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    items, journal, _ = await _close_during_uploads(emulator, tmp_path)
    async with (
        client_for(emulator, limits=Limits(inline_bytes=0)) as again,
        again.edit_many(items, concurrency=3, journal=journal) as batch,
    ):
        rerun = [r async for r in batch]
    assert [] == [(r.key, r.state.value) for r in rerun if not r.ok]
    assert 3 == emulator.counters.submits
    assert max(emulator.counters.billed_by_input.values()) <= 1


# -- 1 (results). closed while the finished jobs' results are being fetched ----------------


async def test_closed_during_result_fetches_the_journal_rerun_fetches_without_paying(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """The jobs finish; each result GET is held by a slow answer when the client closes. No
    internal error; the rerun re-attaches and fetches each result, each input billed once."""
    journal = tmp_path / "j"
    items = _items(png_data_uri, 3)
    emulator.schedule_fault("result", "slow_response", times=3, delay=20.0)
    client = client_for(emulator)
    results = await _closed_once(client, items, lambda: emulator.wait_slow_held(3), journal=journal)
    emulator.clear_faults()
    emulator.release_slow()
    assert [] == _internal(results)
    async with (
        client_for(emulator) as again,
        again.edit_many(items, concurrency=3, journal=journal) as batch,
    ):
        rerun = [r async for r in batch]
    assert [] == [(r.key, r.state.value) for r in rerun if not r.ok]
    assert 3 == emulator.counters.submits
    assert max(emulator.counters.billed_by_input.values()) <= 1
