"""Image files: the structural check (any split of the bytes, any corruption it can see), and
safe names, proven over arbitrary inputs with hypothesis."""

from __future__ import annotations

import errno
import fcntl
import io
import itertools
import os
import stat
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from fal_edit_async import _files
from fal_edit_async._files import (
    ImageCheck,
    TempFile,
    check_writable,
    numbered_stem,
    remove_stale_parts,
    safe_stem,
)

from ._cli_runs import dead_pid

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def image_bytes(fmt: str, size: tuple[int, int] = (37, 21), **options: object) -> bytes:
    """A real image of ``size`` in ``fmt``, made with Pillow."""
    buffer = io.BytesIO()
    Image.new("RGBA" if fmt == "webp" else "RGB", size, (9, 200, 30)).save(
        buffer, FORMATS[fmt], **options
    )
    return buffer.getvalue()


IMAGES = {fmt: image_bytes(fmt) for fmt in FORMATS}


def check(fmt: str, data: bytes, cuts: list[int] | None = None) -> tuple[int, int]:
    """Feed ``data`` split at ``cuts`` and finish."""
    checker = ImageCheck(fmt)
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts or []), len(data)]
    for start, end in itertools.pairwise(edges):
        checker.feed(data[start:end])
    return checker.finish()


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(sorted(FORMATS)), cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_any_split_of_a_valid_image_passes_with_its_size(fmt: str, cuts: list[int]) -> None:
    """However the bytes arrive, a valid image passes and reports its width and height."""
    assert (37, 21) == check(fmt, IMAGES[fmt], cuts)


@pytest.mark.parametrize(
    "options", [{"lossless": True}, {"exif": b"Exif\x00\x00" + bytes(100)}], ids=["vp8l", "vp8x"]
)
def test_every_webp_header_kind_gives_its_size(options: dict[str, object]) -> None:
    """Lossy, lossless and extended WebP files all report their size."""
    assert (5, 9) == check("webp", image_bytes("webp", (5, 9), **options))


def test_a_jpeg_with_big_metadata_before_its_frame_gives_its_size() -> None:
    """The frame header may sit after kilobytes of EXIF; its size is still found."""
    data = image_bytes("jpeg", exif=b"Exif\x00\x00" + bytes(20_000))
    assert (37, 21) == check("jpeg", data, [1, 5, 3000])


@settings(max_examples=80, deadline=None)
@given(at=st.integers(16, 10**6), bit=st.integers(0, 7))
def test_a_png_with_any_flipped_bit_is_refused(at: int, bit: int) -> None:
    """Every PNG chunk carries a CRC: one flipped bit anywhere past the header is caught."""
    data = bytearray(IMAGES["png"])
    data[at % len(data)] ^= 1 << bit
    with pytest.raises(ValueError, match="PNG"):
        check("png", bytes(data))


def _png_of(sizes: list[int]) -> bytes:
    """A PNG of 7x3 pixels whose data comes in IDAT chunks of these sizes (0 allowed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    ihdr = (7).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idats = b"".join(chunk(b"IDAT", bytes(i % 251 for i in range(n))) for n in sizes)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idats + chunk(b"IEND", b"")


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), max_size=8),
    cuts=st.lists(st.integers(0, 10**5), max_size=6),
    flip=st.none() | st.tuples(st.integers(8, 10**5), st.integers(0, 7)),
)
def test_png_chunks_read_whole_or_byte_by_byte_get_one_verdict(
    sizes: list[int], cuts: list[int], flip: tuple[int, int] | None
) -> None:
    """Chunks that arrive whole are checked in one pass, the others byte by byte: both ways
    pass the same PNGs (with their size) and refuse the same damaged ones."""
    data = bytearray(_png_of(sizes))
    if flip is not None:
        data[flip[0] % len(data)] ^= 1 << flip[1]

    def verdict(cut_at: list[int] | None) -> tuple[int, int] | str:
        try:
            return check("png", bytes(data), cut_at)
        except ValueError as exc:
            return type(exc).__name__

    whole, split = verdict(None), verdict(cuts)
    one_by_one = verdict(list(range(len(data))))
    assert whole == split == one_by_one
    assert (whole == (7, 3)) == (flip is None)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=40, deadline=None)
@given(keep=st.integers(1, 10**6))
def test_a_truncated_image_is_refused(fmt: str, keep: int) -> None:
    """Cut anywhere short of its end, no image passes."""
    data = IMAGES[fmt]
    with pytest.raises(ValueError):
        check(fmt, data[: keep % len(data)])


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        pytest.param("png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, id="png-signature-then-junk"),
        pytest.param("png", IMAGES["png"] + b"x", id="png-bytes-after-iend"),
        pytest.param("jpeg", b"\xff\xd8\xff" + b"junk" * 20, id="jpeg-soi-then-junk"),
        pytest.param("webp", IMAGES["webp"][:12] + bytes(40), id="webp-riff-then-zeros"),
    ],
)
def test_a_valid_signature_over_garbage_is_refused(fmt: str, data: bytes) -> None:
    """The first bytes are not enough: what follows must be the format too."""
    with pytest.raises(ValueError):
        check(fmt, data)


@given(st.text())
def test_safe_stems_stay_in_their_folder(name: str) -> None:
    """No stem can name another folder, a hidden file, or nothing."""
    stem = safe_stem(name)
    assert stem and "/" not in stem and "\\" not in stem and "\x00" not in stem
    assert not stem.startswith(".")


@given(st.text())
def test_safe_stems_are_their_own_safe_stems_and_fit_a_name(name: str) -> None:
    """Cleaning twice changes nothing, and a stem leaves room for suffix, index and extension."""
    stem = safe_stem(name)
    assert stem == safe_stem(stem)
    assert len(stem) <= 100 and len(stem.encode()) <= 150


@given(st.text(), st.integers(1, 10**6))
def test_numbered_stems_stay_safe_and_distinct(name: str, n: int) -> None:
    """The n-th claimant's stem is its own safe stem, and differs from the first's."""
    stem = safe_stem(name)
    numbered = numbered_stem(stem, n)
    assert numbered == safe_stem(numbered)
    assert (numbered == stem) == (n == 1)


def test_only_dead_runs_temp_files_are_removed(tmp_path: Path) -> None:
    """A live batch's temp file (this process's, or another live one's) stays; a dead run's
    goes, also one whose pid this process has now (a container's pid 1, run again); a user's
    file that merely looks like a temp file is never touched."""
    mine = TempFile(tmp_path, "m_0", fsync=False, checksum=False)
    mine.write([b"in progress"])
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as live:
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        names = {
            "mine": mine.path.name,
            "dead-with-my-pid": f".a_0.fal-edit-{os.getpid()}-ffff1.part",
            "users": f".notes.{int(dead.stdout)}-12.part",
            "live": f".b_0.fal-edit-{live.pid}-1.part",
            "dead": f".c_0.fal-edit-{int(dead.stdout)}-1.part",
            # A name template's file need not end in _<n>.
            "dead-templated": f".v2 cat.r-1.fal-edit-{int(dead.stdout)}-2.part",
            "not-ours": ".d_0.notapid.part",
        }
        for name in names.values():
            if name != mine.path.name:
                (tmp_path / name).write_bytes(b"x")

        assert 3 == remove_stale_parts(tmp_path)

        assert sorted(n for k, n in names.items() if not k.startswith("dead")) == sorted(
            p.name for p in tmp_path.iterdir()
        )
        live.communicate(b"")
    mine.discard()


def test_a_locked_temp_file_is_kept_whatever_its_pid_says(tmp_path: Path) -> None:
    """A writer in another pid namespace has a pid that looks dead here; its lock on the file
    says it is alive: kept while the lock is held, removed once it is let go."""
    part = tmp_path / f".a_0.fal-edit-{dead_pid()}-1.part"
    part.write_bytes(b"x")
    fd = os.open(part, os.O_RDWR)  # another open file description, as another process has
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert 0 == remove_stale_parts(tmp_path)
        assert part.exists()
    finally:
        os.close(fd)
    assert 1 == remove_stale_parts(tmp_path)
    assert not part.exists()


def test_an_empty_temp_file_not_yet_locked_is_kept_while_it_is_new(tmp_path: Path) -> None:
    """An empty temp file still marked newborn (the sticky bit it is created with) may be a
    live writer's between creating and locking it: kept while new, removed once old."""
    part = tmp_path / f".a_0.fal-edit-{dead_pid()}-1.part"
    part.touch()
    part.chmod(0o1644)
    assert 0 == remove_stale_parts(tmp_path)
    hour_ago = part.stat().st_mtime - 3600
    os.utime(part, (hour_ago, hour_ago))
    assert 1 == remove_stale_parts(tmp_path)


_KILLED_BEFORE_LOCKING = """
import os, signal, sys
from pathlib import Path
from fal_edit_async import _files
temp = _files.TempFile(Path(sys.argv[1]), "a_0", fsync=False, checksum=False)
os.open(temp.path, _files._CREATE, _files._NEWBORN)  # created, not yet locked: then kill -9
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(_files._PID_NAMESPACE is None, reason="no /proc: no namespace to name")
def test_a_run_killed_between_creating_and_locking_leaves_nothing_kept(tmp_path: Path) -> None:
    """kill -9 right after a temp file is created, before its writer locks it: the file is
    empty and still newborn, but its name says its writer ran in this pid namespace, where
    that pid is dead now. The next run removes it at once, not ten minutes later."""
    done = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_LOCKING, str(tmp_path)])
    assert -9 == done.returncode
    [part] = tmp_path.iterdir()
    assert 0 == part.stat().st_size
    assert part.stat().st_mode & stat.S_ISVTX
    assert 1 == remove_stale_parts(tmp_path)
    assert [] == list(tmp_path.iterdir())


def test_a_newborn_temp_file_from_another_namespace_is_kept_while_new(tmp_path: Path) -> None:
    """The same file named by another pid namespace (another container, another host): its
    pid means nothing here, and its writer may be about to lock it. Kept while new."""
    other = "0" * 8 if _files._PID_NAMESPACE != "0" * 8 else "1" * 8
    part = tmp_path / f".a_0.fal-edit-{dead_pid()}-1-{other}.part"
    part.touch()
    part.chmod(0o1644)
    assert 0 == remove_stale_parts(tmp_path)
    assert part.exists()


def test_this_processs_own_newborn_temp_file_is_never_taken_for_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cleaner in another thread of the writer's process can see its file between creating
    and locking it: this pid and this namespace, unlocked, newborn, not yet listed as live.
    Kept; and one this process is not creating, with its pid, is a dead run's: removed."""
    seen: list[int] = []
    real_hold = _files._hold

    def cleaner_between_create_and_lock(lock: int) -> int | None:
        seen.append(remove_stale_parts(tmp_path))
        return real_hold(lock)

    monkeypatch.setattr(_files, "_hold", cleaner_between_create_and_lock)
    temp = TempFile(tmp_path, "a_0", fsync=False, checksum=False)
    temp.write([b"x"])
    temp.commit([], tmp_path / "a_0.png")
    assert [0] == seen and b"x" == (tmp_path / "a_0.png").read_bytes()
    dead_runs = TempFile(tmp_path, "b_0", fsync=False, checksum=False)  # same pid, unknown here
    os.close(os.open(dead_runs.path, _files._CREATE, _files._NEWBORN))
    assert (1 if _files._PID_NAMESPACE else 0) == remove_stale_parts(tmp_path)


@given(st.text(min_size=1, max_size=40).map(safe_stem))
def test_a_temp_files_name_says_its_writers_pid_and_namespace(stem: str) -> None:
    """Whatever the stem, a temp file's name parses back to this process's pid and pid
    namespace (so a cleaner reads what its writer meant), and is never an output's name."""
    name = TempFile(Path("/nowhere"), f"{stem}_0", fsync=False, checksum=False).path.name
    found = _files._STALE_PART.match(name)
    assert found is not None
    assert os.getpid() == int(found.group(1))
    assert _files._PID_NAMESPACE == found.group(2)
    assert name.startswith(".") and name.endswith(".part")


def test_an_empty_temp_file_once_locked_goes_with_its_dead_writer(tmp_path: Path) -> None:
    """Without its newborn mark a temp file was locked by its writer: unlocked now, a dead
    run's is removed at once, even empty and a second old (a run killed before its first
    byte leaves one)."""
    part = tmp_path / f".a_0.fal-edit-{dead_pid()}-1.part"
    part.touch()
    assert 1 == remove_stale_parts(tmp_path)
    assert not part.exists()


def test_a_temp_file_loses_its_newborn_mark_once_locked(tmp_path: Path) -> None:
    """Created with the sticky bit, it has lost it by the time its first byte is written,
    and the published file has the usual permissions."""
    temp = TempFile(tmp_path, "a_0", fsync=False, checksum=False)
    temp.write([b"x"])
    assert 0 == temp.path.stat().st_mode & stat.S_ISVTX
    temp.commit([], tmp_path / "a_0.png")
    mode = stat.S_IMODE((tmp_path / "a_0.png").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert 0o666 & ~umask == mode


def test_where_locks_do_not_work_no_temp_file_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without locks (ENOLCK) cannot tell a live writer: nothing is removed,
    and downloads are written all the same."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    part = tmp_path / f".a_0.fal-edit-{dead_pid()}-1.part"
    part.write_bytes(b"x")
    assert 0 == remove_stale_parts(tmp_path)
    open_before = len(os.listdir("/dev/fd"))
    temp = TempFile(tmp_path, "b_0", fsync=False, checksum=False)
    temp.commit([b"mine"], tmp_path / "b_0.png")
    assert b"mine" == (tmp_path / "b_0.png").read_bytes()
    assert 0 == (tmp_path / "b_0.png").stat().st_mode & stat.S_ISVTX  # not left newborn
    assert open_before == len(os.listdir("/dev/fd"))  # the unlockable lock was closed
    assert {} == _files._CREATING


@pytest.mark.parametrize("end", ["commit", "discard"])
def test_a_temp_file_is_locked_until_its_name_is_gone(tmp_path: Path, end: str) -> None:
    """From its first write until it is renamed into place (or deleted), a temp file is
    locked; the published file is not."""
    temp = TempFile(tmp_path, "a_0", fsync=False, checksum=False)
    temp.write([b"some bytes"])
    fd = os.open(temp.path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if end == "commit":
            temp.commit([b"more"], tmp_path / "a_0.png")
        else:
            temp.discard()
        assert not temp.path.exists()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go: taken without waiting
    finally:
        os.close(fd)


@pytest.mark.parametrize("replace", [True, False], ids=["rename", "link"])
def test_a_temp_file_is_still_locked_as_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    """The file is closed before it is published (so a write error at close keeps it
    unpublished), yet a cleaner never finds it unlocked before its name is gone."""
    published: list[str] = []

    def checked(real: Callable[..., None]) -> Callable[..., None]:
        def publish(src: str, dst: str, **options: object) -> None:
            fd = os.open(src, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            published.append(os.fspath(dst))
            real(src, dst, **options)

        return publish

    name = "replace" if replace else "link"
    monkeypatch.setattr(os, name, checked(getattr(os, name)))
    temp = TempFile(tmp_path, "a_0", fsync=False, checksum=False)
    temp.commit([b"bytes"], tmp_path / "a_0.png", replace=replace)
    assert [os.fspath(tmp_path / "a_0.png")] == published


def test_an_unwritable_folder_is_found_before_anything_is_paid(tmp_path: Path) -> None:
    """check_writable creates the folder and proves a write; a file in its way is an OSError."""
    check_writable(tmp_path / "new" / "out")
    assert [] == list((tmp_path / "new" / "out").iterdir())
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(OSError):
        check_writable(tmp_path / "blocker" / "out")


def test_a_full_disk_is_found_before_anything_is_paid(tmp_path: Path) -> None:
    """atk19 F2: a disk with no byte free still creates an empty file, so the probe writes
    one. (No file may grow past 0 bytes in the child: as on a full disk, a write fails.)"""
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from fal_edit_async._files import check_writable\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
        "try:\n"
        "    check_writable(Path(sys.argv[1]))\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(errno.EFBIG) == done.stdout.strip()
    assert [] == list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("hard_links", [True, False], ids=["link", "no-hard-links"])
def test_a_new_name_is_never_published_over_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    """replace=False keeps a file someone else wrote at the final name (FileExistsError),
    also on a file system without hard links, and publishes where the name is free."""
    if not hard_links:

        def no_link(*_: object, **__: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("fal_edit_async._files.os.link", no_link)
    theirs = tmp_path / "photo_0.png"
    theirs.write_bytes(b"theirs")
    temp = TempFile(tmp_path, "photo_0", fsync=False, checksum=False)
    with pytest.raises(FileExistsError):
        temp.commit([b"mine"], theirs, replace=False)
    temp.discard()
    assert b"theirs" == theirs.read_bytes()

    fresh = TempFile(tmp_path, "photo_1", fsync=False, checksum=False)
    fresh.commit([b"mine"], tmp_path / "photo_1.png", replace=False)
    assert b"mine" == (tmp_path / "photo_1.png").read_bytes()
    assert {"photo_0.png", "photo_1.png"} == {p.name for p in tmp_path.iterdir()}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_fork_waits_while_a_temp_file_is_being_created() -> None:
    """Between its open and its dup a temp file's descriptors are known to no list a child
    could repoint: a fork from another thread waits for them (0.3 s shows it waiting; the
    test passes at once when the creation ends)."""
    import threading

    inside, leave, forked = threading.Event(), threading.Event(), threading.Event()

    def creating() -> None:
        with _files._FORK_GATE.shared():
            inside.set()
            leave.wait()

    def forking() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forked.set()

    creator = threading.Thread(target=creating)
    creator.start()
    assert inside.wait(10)
    forker = threading.Thread(target=forking)
    forker.start()
    try:
        assert not forked.wait(0.3)  # held at the gate
    finally:
        leave.set()
        creator.join()
    assert forked.wait(10)
    forker.join()
