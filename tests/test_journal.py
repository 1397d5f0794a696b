"""The journal: resume without paying twice, in-process and across SIGKILLs."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from PIL import Image

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    ItemState,
    Journal,
    JournalState,
    estimate_batch,
)
from fal_edit_async.emulator import Emulator

WORKER = Path(__file__).with_name("journal_worker.py")


def items_for(uri: str, n: int, prompt: str = "pixel art") -> list[tuple[str, EditImageInput]]:
    """``n`` keyed items editing the test image."""
    return [(f"k{i}", EditImageInput(prompt=f"{prompt} #{i}", image_urls=[uri])) for i in range(n)]


async def run(client: AsyncClient, items: Any, **options: Any) -> list[Any]:
    """Run a batch to its end."""
    async with client.edit_many(items, **options) as batch:
        return [r async for r in batch]


async def test_rerun_skips_downloaded_items(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A finished batch run again with its journal sends nothing and downloads nothing."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    first = await run(client, items_for(png_data_uri, 5), journal=journal, download_to=out)
    submits, downloads = emulator.counters.submits, emulator.counters.downloads

    again = await run(client, items_for(png_data_uri, 5), journal=journal, download_to=out)

    assert all(r.ok for r in first + again)
    assert all(r.resumed for r in again)
    assert (5, 5) == (submits, emulator.counters.submits)
    assert downloads == emulator.counters.downloads
    assert {r.key: r.files for r in first} == {r.key: r.files for r in again}


async def test_missing_output_is_fetched_again_not_resubmitted(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A deleted output file is downloaded again from the journaled job, under its name. One
    whose bytes changed is not provably the item's any more (a user's edit?): it stays as it
    is, and the item is downloaded again under new names. Nothing is submitted again."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    first = await run(client, items_for(png_data_uri, 3), journal=journal, download_to=out)
    first[0].files[0].path.unlink()
    first[1].files[0].path.write_bytes(b"garbage")

    again = await run(client, items_for(png_data_uri, 3), journal=journal, download_to=out)

    assert all(r.ok for r in again)
    assert 3 == emulator.counters.submits
    assert 5 == emulator.counters.downloads  # one each for the two: none wasted on a clash
    by_key = {r.key: r for r in again}
    assert by_key[first[0].key].files[0].path == first[0].files[0].path
    assert b"garbage" == first[1].files[0].path.read_bytes()
    moved = by_key[first[1].key].files[0].path
    assert moved != first[1].files[0].path and moved.parent == out
    with Image.open(moved) as image:
        image.verify()


async def test_a_file_published_but_not_recorded_is_taken_as_the_items_own(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A kill between publishing an output and recording it leaves the file at the name the
    item claimed, unknown to the journal. The rerun downloads the job again: a file there with
    exactly its bytes is that one, kept and recorded, with no duplicate under -2. A file with
    other bytes at such a name stays someone else's: the item moves to new names."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    edit = EditImageInput(prompt="two", image_urls=[png_data_uri], num_images=2)
    items = [("a", edit), *items_for(png_data_uri, 1)]
    first = await run(client, items, journal=journal, download_to=out)
    by_key = {r.key: r for r in first}
    theirs = by_key["k0"].files[0].path
    theirs.write_bytes(b"another run's file")
    with sqlite3.connect(journal) as db:  # the downloaded records never landed
        db.execute("UPDATE items SET state = 'completed', files = NULL")
    before = sorted(p.name for p in out.iterdir())

    again = await run(client, items, journal=journal, download_to=out)

    assert all(r.ok for r in again)
    assert 2 == emulator.counters.submits
    after = {r.key: r for r in again}
    assert by_key["a"].files == after["a"].files  # the same two files, kept as they were
    moved = after["k0"].files[0].path
    assert moved != theirs and b"another run's file" == theirs.read_bytes()
    assert sorted([*before, moved.name]) == sorted(p.name for p in out.iterdir())
    final = await run(client, items, journal=journal, download_to=out)
    assert {r.key: r.files for r in again} == {r.key: r.files for r in final}


async def test_same_size_corruption_is_caught_by_the_checksum(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """An output changed at the same size fails the SHA-256 re-check and is downloaded again,
    under a new name: the changed file is not provably the item's, so it is kept."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    (first,) = await run(client, items_for(png_data_uri, 1), journal=journal, download_to=out)
    path = first.files[0].path
    original = path.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF  # same length, one byte flipped
    path.write_bytes(tampered)

    (again,) = await run(client, items_for(png_data_uri, 1), journal=journal, download_to=out)

    assert again.ok and again.resumed
    assert (1, 2) == (emulator.counters.submits, emulator.counters.downloads)
    assert bytes(tampered) == path.read_bytes()
    assert path != again.files[0].path
    assert original == again.files[0].path.read_bytes()


async def test_changed_prompt_is_a_new_job(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Changing a prompt under the same caller key submits anew; it never reuses the old job."""
    journal = tmp_path / "j.sqlite"
    await run(client, items_for(png_data_uri, 2), journal=journal)

    again = await run(client, items_for(png_data_uri, 2, prompt="grayscale"), journal=journal)

    assert 4 == emulator.counters.submits
    assert not any(r.resumed for r in again)
    async with Journal(journal) as j:
        assert 4 == len(await j.entries())


async def test_refused_item_is_not_paid_for_again(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """An item the model refused stays failed on a re-run instead of being resubmitted."""
    journal = tmp_path / "j.sqlite"
    emulator.schedule_fault("job", "model_failure", error_type="validation")
    (first,) = await run(client, items_for(png_data_uri, 1), journal=journal)

    (again,) = await run(client, items_for(png_data_uri, 1), journal=journal)

    assert (ItemState.FAILED, ItemState.FAILED) == (first.state, again.state)
    assert again.resumed and again.request_id == first.request_id
    assert 1 == emulator.counters.submits


async def test_cancelled_items_are_submitted_on_the_next_run(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Jobs cancelled by leaving a batch early are journaled as fal answered (cancel requested);
    the next run sees fal confirm the cancel and submits them again, once."""
    journal = tmp_path / "j.sqlite"
    emulator.hold_queue()
    async with client.edit_many(items_for(png_data_uri, 6), journal=journal, concurrency=2):
        await emulator.wait_submitted(2)
        await emulator.wait_until(lambda: emulator.counters.streams_opened >= 2)
    async with Journal(journal) as j:
        assert {JournalState.CANCEL_REQUESTED} == {e.state for e in await j.entries()}
    emulator.release_queue()

    again = await run(client, items_for(png_data_uri, 6), journal=journal)

    assert all(r.ok for r in again)
    assert 8 == emulator.counters.submits  # 2 cancelled + 6 now: none of the 6 twice
    assert 2 == emulator.counters.cancels


async def test_journal_never_holds_the_key(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The journal file records ids and URLs, never the API key."""
    journal = tmp_path / "j.sqlite"
    await run(client, items_for(png_data_uri, 2), journal=journal)

    for path in tmp_path.iterdir():
        assert emulator.api_key.encode() not in path.read_bytes()


async def test_dry_run_sends_nothing(emulator: Emulator, png_data_uri: str) -> None:
    """estimate_batch prices valid items, lists invalid ones, and sends no request."""
    items: list[Any] = [
        {"prompt": "x", "image_urls": [png_data_uri], "quality": "low", "image_size": "1024x1024"},
        {"prompt": "y", "image_urls": [png_data_uri]},
        ("bad", {"prompt": "z", "image_urls": [png_data_uri], "num_images": 9}),
    ]

    estimate = estimate_batch(items)

    assert 2 == estimate.items
    assert 1 == estimate.worst_case
    assert [("bad", "num_images")] == [(k, e.field) for k, e in estimate.invalid]
    assert estimate.total_usd > 0
    assert 0 == emulator.counters.requests_total


class _Worker:
    """The batch worker subprocess and what it has reported journaled."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.seen: dict[str, set[str]] = {
            "submitted": set(),
            "completed": set(),
            "downloaded": set(),
        }
        self.lines: list[str] = []
        self._changed = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode()
                self.lines.append(text)
                kind, _, key = text.partition(" ")
                self.seen.setdefault(kind, set()).add(key)
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, emulator: Emulator, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds, re-checked on each line and each emulator event
        (it mixes both: a download may be held only after the worker's last line)."""
        while not condition():
            async with anyio.create_task_group() as tg:

                async def on_line() -> None:
                    await self._changed.wait()
                    tg.cancel_scope.cancel()

                async def on_emulator() -> None:
                    await emulator.wait_until(condition)
                    tg.cancel_scope.cancel()

                tg.start_soon(on_line)
                tg.start_soon(on_emulator)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)


async def _phase(
    emulator: Emulator,
    journal: Path,
    out: Path,
    ready: Callable[[_Worker], bool] | None,
    *,
    total: int,
    downloads: int,
) -> _Worker:
    """Run the worker until ``ready`` holds, then SIGKILL it; None runs it to the end."""
    command = [
        sys.executable, str(WORKER), emulator.queue_url, emulator.api_key, str(journal),
        str(out), str(total), "32", str(downloads),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    async with await anyio.open_process(command, env=env) as process:
        worker = _Worker(process)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.read)
            if ready is None:
                assert 0 == await process.wait()
            else:
                await worker.wait_for(emulator, lambda: ready(worker))
                worker.kill()
                await process.wait()
    return worker


async def test_sigkill_at_every_stage_then_resume(png_data_uri: str, tmp_path: Path) -> None:
    """Killed during submits, while waiting and during downloads, a resumed batch of 300
    submits no item twice and ends with every output on disk and verified."""
    total = 300
    journal, out = tmp_path / "batch.journal", tmp_path / "out"
    async with Emulator(workers=16, fast_images=True) as emu:
        counters = emu.counters

        # 1. During submits: jobs stay queued, so the 32 job slots fill and submitting stops
        #    with every answered submit journaled (a kill mid-POST is the documented gap).
        emu.hold_queue()
        await _phase(
            emu, journal, out,
            lambda w: len(w.seen["submitted"]) == 32 == counters.submits,
            total=total, downloads=8,
        )  # fmt: skip
        assert 32 == counters.submits

        # 2. While waiting: the 32 journaled jobs run and finish; 32 new ones stay queued.
        emu.release_queue(32)
        await _phase(
            emu, journal, out,
            lambda w: len(w.seen["downloaded"]) == 32
            and len(w.seen["submitted"]) == 32 == counters.submits - 32,
            total=total, downloads=8,
        )  # fmt: skip
        assert 64 == counters.submits

        # 3. During downloads: everything runs, but no download may finish. The batch fills
        #    its pipeline (32 jobs + 4 uploads + 8 downloads) with completed items and stops.
        emu.hold_downloads()
        emu.release_queue()
        await _phase(
            emu, journal, out,
            lambda w: emu.downloads_held == 8
            and len(w.seen["completed"]) == 44
            and counters.submits == 64 + len(w.seen["submitted"]),
            total=total, downloads=8,
        )  # fmt: skip

        # 4. Resume to the end.
        emu.release_downloads()
        last = await _phase(emu, journal, out, None, total=total, downloads=8)

        assert total == counters.submits
        assert total == len(counters.submits_by_input)
        assert {1} == set(counters.submits_by_input.values())
        assert 'summary {"completed": 300, "failed": 0}' == last.lines[-1]
        files = sorted(out.iterdir())
        assert total == len(files)
        assert [] == [f for f in files if f.name.startswith(".")]
        for path in files:
            with Image.open(path) as image:
                image.verify()
        async with Journal(journal) as j:
            entries = await j.entries()
        assert Counter({JournalState.DOWNLOADED: total}) == Counter(e.state for e in entries)


async def test_file_is_plain_sqlite_with_string_states(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The journal is an ordinary SQLite file other tools can read: states are plain strings."""
    journal = tmp_path / "j.sqlite"
    await run(client, items_for(png_data_uri, 2), journal=journal, download_to=tmp_path / "out")

    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT key, state, typeof(state), request_id FROM items").fetchall()

    assert {("k0", "downloaded", "text"), ("k1", "downloaded", "text")} == {
        (key.split("@")[0], state, kind) for key, state, kind, _ in rows
    }
    assert all(request_id for *_, request_id in rows)
