"""Attacks (round atk7) on adopting a published-but-unjournaled output (_runner._download)
and on the cleaner that knows its own temp files by inode (_files.remove_stale_parts). Its
three breaks are fixed: a folder under --overwrite is a clash, and a forked child lets go of
its parent's temp files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from fal_edit_async import AsyncClient, EditImageInput
from fal_edit_async._files import TempFile, remove_stale_parts
from fal_edit_async.emulator import Emulator


def _items(uri: str) -> list[tuple[str, EditImageInput]]:
    return [("a", EditImageInput(prompt="one", image_urls=[uri]))]


async def _run(client: AsyncClient, items: Any, **options: Any) -> list[Any]:
    async with client.edit_many(items, **options) as batch:
        return [r async for r in batch]


def _forget_downloads(journal: Path) -> None:
    """A kill between publishing the outputs and recording them."""
    with sqlite3.connect(journal) as db:
        db.execute("UPDATE items SET state = 'completed', files = NULL")


async def _first(client: AsyncClient, uri: str, journal: Path, out: Path) -> tuple[Path, bytes]:
    (first,) = await _run(client, _items(uri), journal=journal, download_to=out)
    assert first.ok
    path = first.files[0].path
    return path, path.read_bytes()


# -- adoption at the claimed name -----------------------------------------------------------


async def test_symlink_with_the_exact_bytes_is_not_adopted_and_its_target_untouched(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A symlink at the claimed name to a file outside the folder with exactly the job's bytes
    is not the item's: it stays a link, the target keeps its bytes, the item moves to -2."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, data = await _first(client, png_data_uri, journal, out)
    outside = tmp_path / "outside.png"
    path.rename(outside)
    path.symlink_to(outside)
    _forget_downloads(journal)

    (again,) = await _run(client, _items(png_data_uri), journal=journal, download_to=out)

    assert again.ok and again.files[0].path != path
    assert again.files[0].path.name.startswith("a-2")
    assert path.is_symlink() and os.readlink(path) == str(outside)
    assert data == outside.read_bytes()
    # and with --overwrite the link is replaced as a name, never written through
    _forget_downloads(journal)
    outside.write_bytes(b"mine")
    (third,) = await _run(
        client, _items(png_data_uri), journal=journal, download_to=out, overwrite=True
    )
    assert third.ok
    assert b"mine" == outside.read_bytes()


async def test_hard_link_with_the_exact_bytes_is_adopted_but_never_written_through(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A hard link to a file elsewhere with exactly the bytes is adopted (it is those bytes);
    once changed it is not the item's any more; --overwrite replaces the name, not the data."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, data = await _first(client, png_data_uri, journal, out)
    outside = tmp_path / "outside.png"
    path.rename(outside)
    os.link(outside, path)
    _forget_downloads(journal)

    (again,) = await _run(client, _items(png_data_uri), journal=journal, download_to=out)
    assert again.ok and again.files[0].path == path
    assert sorted(p.name for p in out.iterdir()) == [path.name]

    outside.write_bytes(b"changed through the other link")
    (third,) = await _run(
        client, _items(png_data_uri), journal=journal, download_to=out, overwrite=True
    )
    assert third.ok and data == third.files[0].path.read_bytes()
    assert b"changed through the other link" == outside.read_bytes()


async def test_adopted_file_changed_afterwards_is_kept_and_the_item_moves(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, data = await _first(client, png_data_uri, journal, out)
    _forget_downloads(journal)
    (again,) = await _run(client, _items(png_data_uri), journal=journal, download_to=out)
    assert again.files[0].path == path
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))

    (third,) = await _run(client, _items(png_data_uri), journal=journal, download_to=out)

    assert third.ok and third.files[0].path != path
    assert data[:-1] == path.read_bytes()[:-1] and data != path.read_bytes()
    assert data == third.files[0].path.read_bytes()


@pytest.mark.parametrize("kind", ["directory", "fifo", "other-bytes", "empty"])
async def test_non_matching_things_at_the_claimed_name_are_left_alone(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, kind: str
) -> None:
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, data = await _first(client, png_data_uri, journal, out)
    path.unlink()
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(data)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "other-bytes":
        path.write_bytes(data + b"\0")
    else:
        path.write_bytes(b"")
    _forget_downloads(journal)

    (again,) = await _run(client, _items(png_data_uri), journal=journal, download_to=out)

    assert again.ok and again.files[0].path != path
    assert data == again.files[0].path.read_bytes()
    if kind == "directory":
        assert path.is_dir() and data == (path / "inside").read_bytes()
    elif kind == "fifo":
        assert path.is_fifo()
    else:
        assert path.is_file() and path.stat().st_size in (0, len(data) + 1)


async def test_directory_at_the_claimed_name_with_overwrite_moves_the_item(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """With --overwrite, a folder at the claimed name is never replaced: the item moves to new
    names (it failed with IsADirectoryError, paid, on every rerun)."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, data = await _first(client, png_data_uri, journal, out)
    path.unlink()
    path.mkdir()
    _forget_downloads(journal)

    (again,) = await _run(
        client, _items(png_data_uri), journal=journal, download_to=out, overwrite=True
    )

    assert path.is_dir()
    assert again.ok, again.error
    assert data == again.files[0].path.read_bytes()


async def test_a_copied_journal_adopts_the_same_file_and_neither_deletes_it(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Two journals claiming the same stem (one a copy of the other) both take the file with
    exactly their job's bytes; neither run makes a duplicate or removes it."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, data = await _first(client, png_data_uri, journal, out)
    copy = tmp_path / "copy.sqlite"
    shutil.copy(journal, copy)
    _forget_downloads(journal)
    _forget_downloads(copy)

    (one,) = await _run(client, _items(png_data_uri), journal=journal, download_to=out)
    (two,) = await _run(client, _items(png_data_uri), journal=copy, download_to=out)

    assert one.files == two.files and one.files[0].path == path
    assert [path.name] == [p.name for p in out.iterdir()]
    assert data == path.read_bytes()
    assert 1 == emulator.counters.submits


async def test_a_file_from_another_job_with_other_bytes_is_not_adopted_by_a_copied_stem(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A second journal that claimed the same stem for a different job (other prompt, so other
    bytes? the emulator's output may not depend on the prompt) never replaces the file."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, data = await _first(client, png_data_uri, journal, out)
    other = tmp_path / "other.sqlite"
    shutil.copy(journal, other)
    with sqlite3.connect(other) as db:
        db.execute("DELETE FROM items")
    items = [("a", EditImageInput(prompt="two", image_urls=[png_data_uri]))]
    (second,) = await _run(client, items, journal=other, download_to=out)
    assert second.ok and second.files[0].path != path
    theirs = second.files[0].path.read_bytes()
    # force the second journal to believe it claimed 'a' and was killed before recording
    with sqlite3.connect(other) as db:
        db.execute("UPDATE items SET state = 'completed', files = NULL, stem = 'a'")
    stat_before = path.stat()

    (third,) = await _run(client, items, journal=other, download_to=out)

    assert third.ok
    assert (third.files[0].path == path) == (theirs == data)  # adopted only if the same bytes
    assert theirs == third.files[0].path.read_bytes()
    after = path.stat()
    assert (stat_before.st_ino, stat_before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert data == path.read_bytes()


# -- the cleaner ----------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _live(folder: Path, prefix: str = "x") -> TempFile:
    temp = TempFile(folder, prefix, fsync=False, checksum=False)
    temp.write([b"live bytes"])
    return temp


def _fork() -> int:
    with warnings.catch_warnings():  # 3.12+ warns when threads run (anyio's idle workers)
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


@pytest.mark.parametrize("pid", ["own", "dead"])
def test_a_symlink_named_like_a_temp_file_to_a_live_one_removes_nothing(
    tmp_path: Path, pid: str
) -> None:
    temp = _live(tmp_path)
    n = os.getpid() if pid == "own" else _dead_pid()
    link = tmp_path / f".evil.fal-edit-{n}-1.part"
    link.symlink_to(temp.path)
    try:
        assert 0 == remove_stale_parts(tmp_path)
        assert link.is_symlink() and temp.path.exists()
        assert temp.path.is_file() and not temp.path.is_symlink()
    finally:
        temp.discard()


@pytest.mark.parametrize("pid", ["own", "dead"])
def test_a_hard_link_or_a_rename_of_a_live_temp_file_is_kept(tmp_path: Path, pid: str) -> None:
    temp = _live(tmp_path)
    n = os.getpid() if pid == "own" else _dead_pid()
    link = tmp_path / f".evil.fal-edit-{n}-ff.part"
    os.link(temp.path, link)
    moved = tmp_path / f".moved.fal-edit-{n}-fe.part"
    other = _live(tmp_path, "y")
    other.path.rename(moved)
    try:
        assert 0 == remove_stale_parts(tmp_path)
        assert link.exists() and temp.path.exists() and moved.exists()
    finally:
        temp.discard()
        other.discard()
        moved.unlink()


@pytest.mark.parametrize("pid", ["own", "dead"])
def test_another_users_abandoned_temp_file_is_never_removed(tmp_path: Path, pid: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    n = os.getpid() if pid == "own" else _dead_pid()
    theirs = tmp_path / f".theirs.fal-edit-{n}-1.part"
    theirs.write_bytes(b"someone else's")
    os.chown(theirs, 65534, 65534)
    mine = tmp_path / f".mine.fal-edit-{n}-2.part"
    mine.write_bytes(b"abandoned")

    assert 1 == remove_stale_parts(tmp_path)
    assert theirs.exists() and not mine.exists()


def test_a_forked_child_that_died_leaves_a_temp_file_the_parent_removes(tmp_path: Path) -> None:
    live = _live(tmp_path, "parent")
    pid = _fork()
    if pid == 0:  # the child: a temp file of its own, then death without cleanup
        try:
            child = TempFile(tmp_path, "child", fsync=False, checksum=False)
            child.write([b"child"])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    try:
        children = [p for p in tmp_path.iterdir() if p.name.startswith(".child.")]
        assert 1 == len(children) and f"-{pid}-" in children[0].name
        assert 1 == remove_stale_parts(tmp_path)
        assert not children[0].exists() and live.path.exists()
    finally:
        live.discard()


def test_a_forked_child_cleaning_keeps_the_parents_live_temp_files(tmp_path: Path) -> None:
    live = _live(tmp_path, "parent")
    read, write = os.pipe()
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            removed = remove_stale_parts(tmp_path)
            os.write(write, str(removed).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    got = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    try:
        assert b"0" == got and live.path.exists()
    finally:
        live.discard()


def test_a_cleaner_racing_many_writers_never_removes_a_live_temp_file(tmp_path: Path) -> None:
    """Threads creating, writing and discarding temp files while another cleans the folder
    over and over: every temp file is still there at its writer's last look."""
    stop = threading.Event()
    lost: list[str] = []
    removed = [0]

    def writer(n: int) -> None:
        for i in range(300):
            temp = TempFile(tmp_path, f"w{n}-{i}", fsync=False, checksum=False)
            temp.write([b"x"])
            temp.write([b"y" * 100])
            if not os.path.lexists(temp.path):
                lost.append(temp.path.name)
            if i % 2:
                temp.commit([b"z"], tmp_path / f"w{n}-{i}.png")
            else:
                temp.discard()

    def cleaner() -> None:
        while not stop.is_set():
            removed[0] += remove_stale_parts(tmp_path)

    sweeper = threading.Thread(target=cleaner)
    sweeper.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    sweeper.join()
    assert [] == lost and 0 == removed[0]
    assert 600 == len(list(tmp_path.glob("*.png")))
    assert [] == [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("stem", ["../escape", "/tmp/escape", "a/../../escape", "b"])
async def test_a_tampered_journal_stem_never_names_a_file_outside_the_item(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path, stem: str
) -> None:
    """A stem in the journal that is not one of the item's own (``a``, ``a-2``...) is
    ignored: nothing is written outside the folder, nor under another item's names."""
    journal, out = tmp_path / "j.sqlite", tmp_path / "out"
    path, _ = await _first(client, png_data_uri, journal, out)
    path.unlink()
    with sqlite3.connect(journal) as db:
        db.execute("UPDATE items SET state = 'completed', files = NULL, stem = ?", (stem,))

    (again,) = await _run(client, _items(png_data_uri), journal=journal, download_to=out)

    assert again.ok and again.files[0].path.parent == out.absolute()
    assert again.files[0].path.name.startswith("a")
    assert [again.files[0].path.name] == [p.name for p in out.iterdir()]
    assert not (tmp_path / "escape_0.png").exists()


async def test_a_directory_named_like_an_output_with_overwrite_on_a_fresh_run(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The same without a journal: --overwrite over a folder named like an output moves the
    item instead of failing it."""
    out = tmp_path / "out"
    (out / "a_0.png").mkdir(parents=True)

    (first,) = await _run(client, _items(png_data_uri), download_to=out, overwrite=True)

    assert (out / "a_0.png").is_dir()
    assert first.ok, first.error


_FORKING_WRITER = """
import os, sys
from pathlib import Path
from fal_edit_async._files import TempFile
hold, done, ready = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
temp = TempFile(Path(sys.argv[1]), "forked", fsync=False, checksum=False)
temp.write([b"bytes"])
if os.fork() == 0:  # a child that outlives the writer, doing something else entirely
    os.write(ready, b"r")  # its fork handlers have run: it is the child it will stay
    os.read(hold, 1)  # until the test lets it go; ``done`` closes as it exits
    os._exit(0)
os.close(done)
os._exit(0)  # the writer dies without cleaning up: its temp file is abandoned
"""


def test_a_writers_temp_file_is_cleaned_once_the_writer_is_dead_even_if_it_forked(
    tmp_path: Path,
) -> None:
    """A writer that forked and died: its child (still alive) does not keep the temp file
    locked, so the next cleaner removes it."""
    hold_r, hold_w = os.pipe()
    done_r, done_w = os.pipe()
    ready_r, ready_w = os.pipe()
    argv = [str(tmp_path), str(hold_r), str(done_w), str(ready_w)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _FORKING_WRITER, *argv], pass_fds=(hold_r, done_w, ready_w)
    )
    os.close(hold_r)
    os.close(done_w)
    os.close(ready_w)
    proc.wait()
    assert b"r" == os.read(ready_r, 1)  # the child runs on
    os.close(ready_r)
    try:
        assert 1 == len([p for p in tmp_path.iterdir() if p.name.endswith(".part")])
        removed = remove_stale_parts(tmp_path)
    finally:
        os.close(hold_w)  # the child reads EOF and exits
        assert b"" == os.read(done_r, 1)  # ... and its end of ``done`` with it
        os.close(done_r)
    # once the child is gone, the lock goes too: the file was abandoned all along
    assert 1 == remove_stale_parts(tmp_path) + removed
    assert 1 == removed


@pytest.mark.parametrize("pid", ["own", "dead"])
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_directory_named_like_a_temp_file_is_left_and_nothing_blocks(
    tmp_path: Path, pid: str, kind: str
) -> None:
    n = os.getpid() if pid == "own" else _dead_pid()
    odd = tmp_path / f".odd.fal-edit-{n}-1.part"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.mkdir()
    assert 0 == remove_stale_parts(tmp_path)
    assert odd.is_fifo() if kind == "fifo" else odd.is_dir()


def test_an_abandoned_temp_name_hard_linked_to_a_file_outside_only_loses_the_name(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"precious")
    folder = tmp_path / "out"
    folder.mkdir()
    os.link(outside, folder / f".x.fal-edit-{_dead_pid()}-1.part")

    assert 1 == remove_stale_parts(folder)
    assert b"precious" == outside.read_bytes() and [] == list(folder.iterdir())
