"""How many ledger operations a journaled item costs, and that the ones saved lose nothing.

A fresh item reads no row (the batch read every key once when it started) and its output
names are journaled with its output, not in a write of their own: four operations per item
(``submitting``, ``submitted``, ``completed`` with the names, ``downloaded``) instead of six.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    ItemCompleted,
    Journal,
    JournalEntry,
)
from fal_edit_async.emulator import Emulator


class CountingJournal(Journal):
    """The SQLite journal, counting the calls the batch makes of it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: Counter[str] = Counter()

    async def get(self, key: str) -> JournalEntry | None:
        self.calls["get"] += 1
        return await super().get(key)

    async def record_name(self, key: str, folder: str, stem: str) -> None:
        self.calls["record_name"] += 1
        await super().record_name(key, folder, stem)


def items_for(uri: str, keys: range) -> list[tuple[str, EditImageInput]]:
    return [(f"k{i}", EditImageInput(prompt=f"pixel art #{i}", image_urls=[uri])) for i in keys]


async def run(client: AsyncClient, items: Any, journal: Journal, out: Path, **kw: Any) -> list[Any]:
    async with journal:
        async with client.edit_many(items, journal=journal, download_to=out, **kw) as batch:
            return [r async for r in batch]


def rows(path: Path) -> dict[str, tuple[str, str | None, str | None]]:
    """Each row's state, folder and stem, by the item's key (rows are ``key@content``)."""
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT key, state, folder, stem FROM items").fetchall()
    return {key.partition("@")[0]: (state, folder, stem) for key, state, folder, stem in found}


async def test_a_fresh_item_reads_no_row_and_journals_its_names_with_its_output(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    journal, out = CountingJournal(tmp_path / "j.sqlite"), tmp_path / "out"

    results = await run(client, items_for(png_data_uri, range(6)), journal, out)

    assert all(r.ok for r in results) and 6 == emulator.counters.submits
    assert 0 == journal.calls["get"] and 0 == journal.calls["record_name"]
    folder = str(out.absolute())
    by_key = {r.key: r for r in results}
    for key, (state, row_folder, stem) in rows(journal.path).items():
        assert ("downloaded", folder) == (state, row_folder)
        assert stem is not None and by_key[key].files[0].path.name.startswith(stem)
        assert by_key[key].files[0].path.is_file()


async def test_a_rerun_reads_the_rows_it_has_and_only_those(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    path, out = tmp_path / "j.sqlite", tmp_path / "out"
    first = await run(client, items_for(png_data_uri, range(3)), CountingJournal(path), out)
    journal = CountingJournal(path)

    again = await run(client, items_for(png_data_uri, range(5)), journal, out)

    assert 3 == journal.calls["get"]  # k0-k2 have rows; k3 and k4 are new
    assert 5 == emulator.counters.submits  # the three done before are not paid for again
    assert {r.key for r in again if r.resumed} == {r.key for r in first}
    assert {r.key: r.files for r in first} == {r.key: r.files for r in again if r.resumed}
    assert all(r.ok for r in again)


async def test_a_name_taken_after_completion_is_claimed_again_and_journaled(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Another run writes the very file name the item claimed as its job completed: the
    download claims new names, journals them (a write of their own then), and the other
    run's file stays as it is."""
    journal, out = CountingJournal(tmp_path / "j.sqlite"), tmp_path / "out"
    out.mkdir()
    theirs: list[Path] = []

    async def on_event(event: object) -> None:
        if isinstance(event, ItemCompleted):
            (_, _, stem) = rows(journal.path)[event.key]  # journaled with the output
            assert stem is not None
            theirs.append(out / f"{stem}_0.png")
            theirs[-1].write_bytes(b"another run's file")

    results = await run(client, items_for(png_data_uri, range(1)), journal, out, on_event=on_event)

    (result,) = results
    assert result.ok and 1 == journal.calls["record_name"]
    assert [b"another run's file"] == [p.read_bytes() for p in theirs]
    (state, _, stem) = rows(journal.path)["k0"]
    assert stem is not None and result.files[0].path.name.startswith(stem)
    assert "downloaded" == state and result.files[0].path != theirs[0]
    assert 1 == emulator.counters.submits
