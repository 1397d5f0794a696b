"""Where a download's bytes are written: on the event loop, or in worker threads when a
folder's writes block; and a write the kernel cuts short still writes every byte."""

# ruff: noqa: F811 - the tests take test_downloads' fixtures, imported by name

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from fal_edit_async import (
    _downloads,
    _files,
)
from fal_edit_async._core import Core
from fal_edit_async._downloads import download_image
from fal_edit_async._files import TempFile

from .test_downloads import BIG, PNG, Server, server, transport  # noqa: F401 - fixtures

#: How long a write takes on the slow disk played here (well over _SLOW_OPERATION).
SLOW_WRITE = 4 * _downloads._SLOW_OPERATION


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each ``TempFile.write``, in order: True when it ran on the event loop's thread.
    The folders' slowness is forgotten first, so each test starts with every folder fast."""
    monkeypatch.setattr(_downloads, "_INLINE", _downloads._InlineDisk())
    seen: list[bool] = []
    write = TempFile.write

    def recording(self: TempFile, chunks: list[bytes]) -> None:
        seen.append(threading.current_thread() is threading.main_thread())
        write(self, chunks)

    monkeypatch.setattr(TempFile, "write", recording)
    return seen


def slow_disk(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Every write into ``folder`` blocks for SLOW_WRITE, as on a share that stalls."""
    write = TempFile.write

    def slow(self: TempFile, chunks: list[bytes]) -> None:
        if self.path.parent == folder:
            time.sleep(SLOW_WRITE)  # the disk itself is slow: this is not synchronisation
        write(self, chunks)

    monkeypatch.setattr(TempFile, "write", slow)


async def test_an_ordinary_download_is_written_on_the_loop(
    server: Server, transport: Core, tmp_path: Path, writes: list[bool]
) -> None:
    """A fast folder's chunks are written on the event loop: no thread hop per batch."""
    image = server.image("/big.png", BIG)

    got = await download_image(transport, image, tmp_path, "cat", 0)

    assert BIG == got.path.read_bytes()
    assert len(writes) > 4  # chunk by chunk, as they arrive
    assert all(writes)


@pytest.mark.parametrize("option", ["checksum", "fsync"])
async def test_a_checksum_or_fsync_goes_through_worker_threads(
    server: Server, transport: Core, tmp_path: Path, writes: list[bool], option: str
) -> None:
    """SHA-256 runs beside the loop, and fsync waits for the disk: neither on the loop."""
    image = server.image("/big.png", BIG)

    got = await download_image(transport, image, tmp_path, "cat", 0, **{option: True})

    assert BIG == got.path.read_bytes()
    assert writes
    assert not any(writes)


async def test_a_folder_whose_writes_block_moves_to_worker_threads(
    server: Server,
    transport: Core,
    tmp_path: Path,
    writes: list[bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two slow writes on the loop, and that folder's writes go through threads from then
    on, this download's and the next; another folder's still run on the loop."""
    slow, fast = tmp_path / "slow", tmp_path / "fast"
    slow_disk(monkeypatch, slow)
    image = server.image("/big.png", BIG)

    first = await download_image(transport, image, slow, "a", 0)
    on_loop = writes.count(True)
    writes.clear()
    second = await download_image(transport, image, slow, "b", 0)
    in_threads = list(writes)
    writes.clear()
    elsewhere = await download_image(transport, image, fast, "c", 0)

    assert [BIG] * 3 == [f.path.read_bytes() for f in (first, second, elsewhere)]
    assert _downloads._SLOW_OPERATIONS == on_loop
    assert in_threads
    assert not any(in_threads)
    assert all(writes)


async def test_a_small_file_in_a_slow_folder_is_still_written_at_once(
    server: Server,
    transport: Core,
    tmp_path: Path,
    writes: list[bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below _INLINE_MAX a thread hop costs more than the file: one write, on the loop."""
    slow_disk(monkeypatch, tmp_path)
    big, small = server.image("/big.png", BIG), server.image("/small.png", PNG)
    await download_image(transport, big, tmp_path, "a", 0)  # the folder is found slow
    writes.clear()

    got = await download_image(transport, small, tmp_path, "b", 0)

    assert PNG == got.path.read_bytes()
    assert [True] == writes


def test_the_speed_extra_checks_crcs_when_installed() -> None:
    """With zlib-ng installed (the speed extra; the dev extra has it), its CRC-32 is used."""
    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    assert zlib_ng.crc32 is _files._crc32


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=64), max_size=40),
    caps=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=20),
    iov_max=st.integers(min_value=1, max_value=8),
)
def test_a_write_the_kernel_cuts_short_goes_on_where_it_stopped(
    chunks: list[bytes], caps: list[int], iov_max: int
) -> None:
    """writev may write fewer bytes than asked (a signal, a nearly full disk) and take only
    so many buffers: every byte still lands once, in order."""
    calls = iter(caps * 1000)
    real = os.writev

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        assert 0 < len(buffers) <= iov_max
        data = b"".join(bytes(b) for b in buffers)
        return real(fd, [data[: next(calls)]])

    with tempfile.TemporaryFile() as file, pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "writev", short_writev)
        patch.setattr(_files, "_IOV_MAX", iov_max)
        _files._write_all(file.fileno(), chunks)
        file.seek(0)
        assert b"".join(chunks) == file.read()


def test_a_write_that_takes_nothing_fails_instead_of_spinning() -> None:
    """A writev answering 0 for a non-empty write (a broken file system) is an OSError,
    which the download reports as its own failure, rather than a loop that never ends."""
    with tempfile.TemporaryFile() as file, pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "writev", lambda fd, buffers: 0)
        with pytest.raises(OSError, match="took no bytes"):
            _files._write_all(file.fileno(), [b"abc"])
