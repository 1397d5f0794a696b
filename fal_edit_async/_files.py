"""Image files on disk: formats, safe names, and temp files renamed into place only when whole.

Pure helpers plus :class:`TempFile`, whose methods block (callers run them in a worker thread).
Both uploads (checking inputs) and downloads (writing outputs) use these, so one module decides
what an image is and what a name may contain.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import stat
import sys
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

if sys.platform != "win32":
    import fcntl

try:  # the speed extra: zlib-ng's CRC-32 is 15 times zlib's, the most a download costs here
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # pragma: no cover - the extra is installed in the test environment
    _crc32 = zlib.crc32

__all__ = [
    "CONTENT_TYPES",
    "EXTENSIONS",
    "ImageCheck",
    "TempFile",
    "check_writable",
    "fold_name",
    "image_names_in",
    "numbered_stem",
    "remove_stale_parts",
    "stem_of_output",
    "safe_stem",
    "sniff_image_format",
]

#: The formats the edit model reads and writes, with their file extension and content type.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

#: A stem is at most this many characters and UTF-8 bytes: with a suffix, an index and an
#: extension it stays well inside the 255 bytes most file systems allow in a name.
_MAX_STEM = 100
_MAX_STEM_BYTES = 150
#: Never in a name: path separators, control characters, and what Windows refuses.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|\ud800-\udfff]')
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
)
#: Temp files: ``.<stem>_<index>.fal-edit-<pid>-<counter>-<namespace>.part`` (the marker,
#: so a user's ``.notes.2023-12.part`` is never taken for one). Their writer holds a lock on
#: them, which tells a live run's from a dead one's wherever it runs; the pid only tells
#: within one pid namespace, which the last part names (absent where it cannot be known,
#: and in names written before it was added).
_STALE_PART = re.compile(r"\..+\.fal-edit-([0-9]+)-[0-9a-f]+(?:-([0-9a-f]{8}))?\.part\Z", re.ASCII)
_TEMP_COUNTER = itertools.count()


def _pid_namespace() -> str | None:
    """Eight hex digits naming this kernel boot and pid namespace, or None (no /proc).

    Where a temp file's name carries this process's, its pid means the same here as for its
    writer: a dead pid is a dead writer, even one killed before it could lock the file."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_bytes()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.blake2s(boot + b"/%d" % namespace, digest_size=4).hexdigest()


_PID_NAMESPACE = _pid_namespace()
#: This process's temp files while they have their names, by (device, inode): how a cleaner
#: knows its own without opening them (see _remove_if_abandoned), and what a forked child
#: lets go of (see _release_in_child).
_LIVE_HERE: dict[tuple[int, int], TempFile] = {}
#: This process's temp files being created, by name, from just before the file exists until
#: it is in _LIVE_HERE, with the descriptors made for it so far: a cleaner here keeps them
#: (the file may exist, not yet locked), and a forked child lets go of them too.
_CREATING: dict[str, list[int]] = {}
_LIVE_LOCK = threading.Lock()  # written by the writers' worker threads


class _ForkGate:
    """Held shared while a temp file's descriptors are made and not yet recorded, and
    exclusively by a fork: so a child never inherits a descriptor it does not know of."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._inside = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._inside += 1
        try:
            yield
        finally:
            with self._changed:
                self._inside -= 1
                if not self._inside:
                    self._changed.notify_all()

    def before_fork(self) -> None:
        self._changed.acquire()
        while self._inside:  # a few system calls away (an open, a dup)
            self._changed.wait()

    def after_fork(self) -> None:
        self._changed.release()


_FORK_GATE = _ForkGate()


def _release_in_child() -> None:
    """In a forked child, point the inherited descriptors of its parent's temp files at
    /dev/null: a lock is the open file's, so a child that outlives the writer would keep a
    dead run's file locked, and never cleaned. The numbers stay valid for the objects that
    still hold them (closing one closes /dev/null, never a file the child opened since).
    The child may be in another pid namespace (its parent unshared one): named again."""
    global _PID_NAMESPACE
    _FORK_GATE.after_fork()
    _PID_NAMESPACE = _pid_namespace()
    fds = [fd for made in _CREATING.values() for fd in made]
    fds += [fd for temp in _LIVE_HERE.values() for fd in temp.descriptors()]
    _LIVE_HERE.clear()
    _CREATING.clear()
    if not fds:
        return
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return
    for fd in fds:
        with contextlib.suppress(OSError):
            os.dup2(null, fd, inheritable=False)
    os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_FORK_GATE.before_fork,
        after_in_parent=_FORK_GATE.after_fork,
        after_in_child=_release_in_child,
    )
#: A temp file is created with the sticky bit (meaningless on a file) as well as the usual
#: permissions, and loses it once locked: the mark of a file not yet locked.
_NEWBORN = 0o666 | stat.S_ISVTX
#: Exclusive, and binary on Windows (where os.open would translate newlines otherwise).
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
#: An empty temp file still marked newborn, and younger than this, may be a live writer's
#: that has not locked it yet (microseconds after creating it); the margin is for clocks
#: that disagree across a network file system.
_UNLOCKED_GRACE = 600.0


def sniff_image_format(head: bytes) -> str | None:
    """The image format named by a file's first bytes (12 are enough), or None.

    Returns:
        ``"png"``, ``"jpeg"``, ``"webp"``, ``"gif"``, or None for anything else.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def safe_stem(stem: str) -> str:
    """A file name stem that stays inside its folder and reads as the input's name.

    Letters of any script are kept (写真1 stays 写真1, NFC-normalised); path separators,
    control characters and ``:*?"<>|`` become ``_``; leading dots and surrounding spaces go
    (no hidden files, no ``..``), as do trailing dots; a reserved device name (``CON``) gets a
    ``_`` in front. The result is cut to 100 characters and 150 UTF-8 bytes, is never empty,
    and is its own safe stem (cleaning twice changes nothing).
    """
    # A name that is not UTF-8 (``caf\xe9.png`` from a Latin-1 system) reaches Python with
    # surrogate escapes, which no output name may hold: they become ``_`` too.
    cleaned = _UNSAFE.sub("_", unicodedata.normalize("NFC", stem)).strip().lstrip(".")
    cleaned = cleaned[:_MAX_STEM]
    while len(cleaned.encode()) > _MAX_STEM_BYTES:
        cleaned = cleaned[:-1]
    cleaned = cleaned.rstrip(". ")
    if cleaned.split(".")[0].upper() in _RESERVED:
        cleaned = f"_{cleaned}"[:_MAX_STEM]
    return cleaned or "image"


_OUTPUT_NAME = re.compile(r"^(.+)_(\d+)\.(png|jpg|webp)$", re.IGNORECASE)


def stem_of_output(name: str) -> str | None:
    """The stem of a name written as ``<stem>_<index>.<ext>``, or None."""
    found = _OUTPUT_NAME.match(name)
    return found.group(1) if found else None


def image_names_in(folder: Path) -> frozenset[str]:
    """The names, without extension and case-folded, of the image files in ``folder``: the
    names an output written there could replace, whoever wrote them (an input, another run).

    The extension is ignored on purpose: ``shot_1.jpg`` keeps ``shot_1.png`` from being
    written beside it, so a folder never holds two files that read as one image.
    """
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return frozenset()
    return frozenset(
        fold_name(base)
        for name in names
        if (base := _image_base(name)) is not None and not name.startswith(".")
    )


def fold_name(name: str) -> str:
    """A name as file systems may compare it: NFC (APFS and HFS+ take café in either form
    for one name) and case-folded (macOS, Windows)."""
    return unicodedata.normalize("NFC", name).casefold()


def _image_base(name: str) -> str | None:
    stem, dot, ext = name.rpartition(".")
    return stem if dot and stem and ext.lower() in _IMAGE_EXTENSIONS else None


_IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp"})


def numbered_stem(stem: str, n: int) -> str:
    """``stem`` for the n-th claimant: ``stem`` itself, then ``stem-2``, ``stem-3``..., cut so
    that it stays within :func:`safe_stem`'s limits (and so is its own safe stem)."""
    if n == 1:
        return stem
    suffix = f"-{n}"
    base = stem[: _MAX_STEM - len(suffix)]
    while len(base.encode()) + len(suffix) > _MAX_STEM_BYTES:
        base = base[:-1]
    return f"{base.rstrip('. ')}{suffix}"


def remove_stale_parts(folder: Path) -> int:
    """Delete the temp files that runs now dead left in ``folder``; returns how many.

    Only names :class:`TempFile` writes are touched, and only when their writer is gone: it
    holds a lock on the file from creating it until it is renamed into place, which this
    checks without waiting. So a batch in the same folder, in this process, another one, or
    another container on a shared folder, keeps its downloads in progress. Where locks do
    not work (some network file systems) nothing is removed; without them at all (Windows)
    the pid in the name decides.
    """
    removed = 0
    try:
        candidates = list(folder.iterdir())
    except OSError:
        return 0
    for path in candidates:
        found = _STALE_PART.match(path.name)
        if found is None:
            continue
        here = _PID_NAMESPACE is not None and found.group(2) == _PID_NAMESPACE
        if _remove_if_abandoned(path, int(found.group(1)), here=here):
            removed += 1
    return removed


def _remove_if_abandoned(path: Path, pid: int, *, here: bool) -> bool:
    """Delete one temp file if its writer is gone; True when it was deleted. ``here``: its
    name says its writer ran in this pid namespace, so a dead pid is a dead writer."""
    # This process's own are known without opening them: opening and closing one here could
    # drop its lock where flock is emulated by fcntl locks, as on NFS. Any other with this
    # pid is a dead run's that had it too (a container's pid 1, run again): its lock tells.
    # Another pid alive in this namespace may be the writer: kept, as it always was. A
    # dead-looking pid proves nothing on its own.
    try:
        seen = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(seen.st_mode):  # a FIFO is never opened: that would wake its reader
        return False
    if pid == os.getpid():
        with _LIVE_LOCK:
            if _identity_of(seen) in _LIVE_HERE or path.name in _CREATING:
                return False
    elif _alive(pid):
        return False
    if sys.platform == "win32":
        path.unlink(missing_ok=True)
        return True
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone already, a symlink, or not ours to open: left alone
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        if info.st_uid != os.geteuid():  # another user's (root opens anything): theirs
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by its live writer, or no locks here to tell: kept
            return False
        # Locked: its writer is gone. Or it has just created it and not yet locked it: then
        # the file still has its newborn mark, and nothing written.
        # Unless its pid, dead (or this process's, which is not creating it), was this
        # namespace's: a writer killed in between left it.
        newborn = info.st_mode & stat.S_ISVTX and info.st_size == 0
        if newborn and not here and time.time() - info.st_mtime < _UNLOCKED_GRACE:
            return False
        try:
            if not os.path.samestat(os.lstat(path), info):
                return False  # renamed away meanwhile, and the name reused
            os.unlink(path)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)  # drops the lock


def _hold(lock: int) -> bool:
    """Lock a new temp file for its writer's whole life, on ``lock``, a descriptor of its
    own (so the lock outlives closing the file, until its name is gone); False where locks
    do not work (its cleaners can tell nothing, and remove nothing)."""
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a cleaner looking at it this instant: it lets go at once
            fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def _identity_of(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a pid no process can have: not alive here
        return False
    except OSError:  # it exists, but is not ours to signal
        return True
    return True


def _temp_suffix() -> str:
    """Unique to this process and file: the pid (so a live run's files are known), a counter.

    Not random on purpose: ``secrets`` costs a getrandom syscall per file (measurable at
    1 GB/s), and uniqueness is all that matters, since temp files are created exclusively.
    """
    namespace = "" if _PID_NAMESPACE is None else f"-{_PID_NAMESPACE}"
    return f"fal-edit-{os.getpid()}-{next(_TEMP_COUNTER):x}{namespace}"


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there; OSError says why not.

    Run before anything is paid, so an unwritable output folder costs nothing. A byte is
    written: a full disk still creates an empty file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    probe = TempFile(folder, "fal-edit-probe", fsync=False, checksum=False)
    try:
        probe.write([b"\0"])
    finally:
        probe.discard()


class TempFile:
    """A ``.part`` file next to its final name; every method blocks (a download runs them
    on the event loop, or in a worker thread where the folder is slow: see _downloads).

    The file is created by the first write, and the last batch is written by ``commit``:
    thread hops cost more than the writes, so a small image takes exactly one. From its
    creation until its name is gone (renamed into place, or deleted) it is locked, which is
    how :func:`remove_stale_parts` knows it is live.
    """

    def __init__(self, folder: Path, prefix: str, *, fsync: bool, checksum: bool) -> None:
        self.path = folder / f".{prefix}.{_temp_suffix()}.part"
        self.committed = False
        self._fsync = fsync
        self._hash = hashlib.sha256() if checksum else None
        self._file: BinaryIO | None = None
        self._lock: int | None = None
        self._identity: tuple[int, int] | None = None
        #: Checks the bytes as they are written, in the writer's thread (off the event loop).
        self.check: ImageCheck | None = None
        #: :func:`file_identity` of the file this published, once it did.
        self.published: FileIdentity | None = None

    def write(self, chunks: list[bytes]) -> None:
        """Append ``chunks``, creating the file (exclusively) on the first call."""
        if self._file is None:
            try:
                self._create()
            except FileNotFoundError:  # the folder went away (or never was): one stat less
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._create()
        check, digest = self.check, self._hash
        for chunk in chunks:
            if check is not None:
                check.feed(chunk)  # CRCs release the GIL, like the hash
            if digest is not None:
                digest.update(chunk)
        # One writev for the batch: each write call hands the GIL to the event loop's
        # thread and takes it back, and that contention cost more than the writes.
        assert self._file is not None
        _write_all(self._file.fileno(), chunks)

    def commit(
        self,
        chunks: list[bytes],
        final: Path,
        verify: Callable[[], None] | None = None,
        *,
        replace: bool = True,
        ours: bool = False,
    ) -> str | None:
        """Write the last batch, run ``verify`` (which raises to refuse the file), and rename
        the file over ``final``; returns the SHA-256. With ``replace=False`` a file already
        at ``final`` (another process wrote it meanwhile) is never replaced:
        ``FileExistsError``, and the temp file stays for :meth:`discard`.

        ``ours`` (with ``replace=False``): a journal says this very output was written at
        ``final`` before. A regular file there with exactly these bytes is it, and kept; any
        other (an edit, a file written after it was deleted, a folder) is someone else's, and
        raises as above. Nothing at ``final`` is ever replaced on a guess that it is broken."""
        self.write(chunks)
        if verify is not None:
            verify()
        assert self._file is not None
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        info = os.fstat(self._file.fileno())
        # Closed before it is published, so a write error the close reports (NFS) keeps it
        # unpublished; the lock's own descriptor keeps it locked until its name is gone.
        self._file.close()
        try:
            if replace:
                try:
                    os.replace(self.path, final)
                except IsADirectoryError:  # a folder is never replaced: a clash, as below
                    raise FileExistsError(errno.EEXIST, "a folder is there", str(final)) from None
            else:
                _publish_new(self.path, final)
            # The file now at ``final`` (a link or a rename keeps the inode and the mtime):
            # what this writer may delete again. Size and mtime too, as a file rewritten in
            # place keeps the inode, and one made after a delete may be given it again.
            self.published = file_identity(info)
        except FileExistsError:
            if not ours:
                raise
            if not self._same_as(final):
                raise
            os.unlink(self.path)  # the file there is kept as it is: not one this wrote
        self.committed = True
        self._unlock()
        return None if self._hash is None else self._hash.hexdigest()

    def _same_as(self, other: Path) -> bool:
        """True when ``other`` is a regular file with exactly this file's bytes."""
        try:
            size = self.path.stat().st_size
            digest = self._hash.hexdigest() if self._hash is not None else _sha256(self.path)
        except OSError:
            return False
        return holds(other, size, digest)

    def _create(self) -> None:
        """Create the file exclusively (a clash with another download fails, never
        interleaves) and lock it before its first byte. It is born with the sticky bit, which
        goes once it is locked: a cleaner that finds an unlocked file without it knows its
        writer had it locked, and is gone (a kill right after creating it leaves it empty)."""
        name, made = self.path.name, list[int]()  # the file's descriptor, then its lock's
        with _FORK_GATE.shared():  # a fork waits: its child must know every descriptor
            with _LIVE_LOCK:
                _CREATING[name] = made
            try:
                made.append(os.open(self.path, _CREATE, _NEWBORN))
                if sys.platform != "win32":
                    with contextlib.suppress(OSError):  # no lock: no cleaner removes it
                        made.append(os.dup(made[0]))  # its own, not inherited by exec
            except BaseException:
                with _LIVE_LOCK:
                    del _CREATING[name]
                raise
        fd = made[0]
        try:
            info = os.fstat(fd)
            if len(made) > 1 and not _hold(made[1]):
                with _FORK_GATE.shared():  # closed and untracked in one step, as a fork sees
                    os.close(made.pop())
            # Cleared without a lock too (where locks fail no cleaner removes anything): the
            # published file must not keep it. Should fchmod fail, a cleaner gives a grace.
            if info.st_mode & stat.S_ISVTX:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~stat.S_ISVTX)
            file = os.fdopen(fd, "wb", buffering=0)
        except BaseException:
            with _FORK_GATE.shared():
                for descriptor in made:
                    with contextlib.suppress(OSError):
                        os.close(descriptor)
                with _LIVE_LOCK:
                    del _CREATING[name]
            raise
        # Listed by descriptors() from here: the file leaves _CREATING in the same step.
        self._file, self._identity = file, _identity_of(info)
        self._lock = made[1] if len(made) > 1 else None
        with _LIVE_LOCK:
            _LIVE_HERE[self._identity] = self
            del _CREATING[name]

    @property
    def left_behind(self) -> bool:
        """True while a temp file exists that nobody will rename."""
        return self._file is not None and not self.committed

    def discard(self) -> None:
        """Close and delete the temp file; best effort, so the original error stays visible."""
        with contextlib.suppress(OSError):
            if self._file is not None:
                self._file.close()
            if not self.committed:
                self.path.unlink(missing_ok=True)
        self._unlock()

    def descriptors(self) -> list[int]:
        """The open descriptors of this file (the file's, while open, and its lock's)."""
        fds = [] if self._lock is None else [self._lock]
        if self._file is not None and not self._file.closed:
            fds.append(self._file.fileno())
        return fds

    def _unlock(self) -> None:
        identity, self._identity = self._identity, None
        if identity is not None:
            with _LIVE_LOCK:
                _LIVE_HERE.pop(identity, None)
        lock, self._lock = self._lock, None
        if lock is not None:
            with contextlib.suppress(OSError):
                os.close(lock)


#: The most buffers one writev takes (POSIX guarantees 16; Linux takes 1024).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write every chunk, in order, in as few system calls as the kernel allows (one
    ``write`` per chunk where there is no ``writev``: Windows)."""
    writev = getattr(os, "writev", None)
    limit = _IOV_MAX if writev is not None else 1
    views = [memoryview(chunk) for chunk in chunks if chunk]
    while views:
        batch = views[:limit]
        written = writev(fd, batch) if writev is not None else os.write(fd, batch[0])
        if not written:  # nothing taken, and no error said: never spin on it
            raise OSError(errno.EIO, "the file system took no bytes of a write")
        # A short write (a signal, a full disk about to fail): go on from where it stopped.
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        views = views[done:]
        if written:
            views[0] = views[0][written:]


def holds(path: Path, size: int, sha256: str | None) -> bool:
    """True when ``path`` is a regular file of ``size`` bytes with this SHA-256 (any bytes
    of that size when ``sha256`` is None); False for anything else, or nothing, there.

    Opened without following a link or waiting on a FIFO, then judged by what was opened:
    whatever is put at the name meanwhile, nothing blocks and nothing else counts.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        with open(os.open(path, flags), "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                return False
            return sha256 is None or hashlib.file_digest(file, "sha256").hexdigest() == sha256
    except OSError:
        return False


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


#: What tells one file from another at a name: device, inode, size, mtime (ns).
FileIdentity = tuple[int, int, int, int]


def file_identity(info: os.stat_result) -> FileIdentity:
    """The :data:`FileIdentity` of a file from its ``stat``."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _publish_new(temp: Path, final: Path) -> None:
    """Rename ``temp`` to ``final`` unless a file is there: ``FileExistsError`` then.

    link(2) refuses an existing name atomically, where rename(2) would replace it. A file
    system without hard links (FAT, some network shares) gets a check, then a rename: the
    file is never lost, but a writer racing in between the two can be replaced.
    """
    try:
        os.link(temp, final)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "File exists", str(final)) from None
        os.replace(temp, final)
        return
    with contextlib.suppress(OSError):
        os.unlink(temp)


class ImageCheck:
    """Checks an image's structure as its bytes stream in, without holding them.

    PNG: every chunk's length and CRC, from the signature through ``IEND``, nothing after.
    JPEG: SOI first, each segment's length up to the scan, EOI last. WebP: the RIFF length is
    the file's length. The size comes from IHDR, the JPEG frame header, or the WebP header.
    ``feed`` every chunk in order, then ``finish`` returns ``(width, height)`` or raises
    ``ValueError`` saying what is broken. Linear in the bytes, constant memory.
    """

    def __init__(self, fmt: str) -> None:
        if fmt not in EXTENSIONS:
            raise ValueError(f"not a format this checks: {fmt!r}")
        self._fmt = fmt
        self._total = 0
        self._tail = b""
        self._head = bytearray()  # WebP keeps its size in its first 30 bytes
        self.size: tuple[int, int] | None = None
        # The parse: ``_want`` bytes are gathered into ``_buf`` for ``_step`` to read, or
        # (``_skip``) passed over; PNG chunk data is CRC'd on the way past.
        self._buf = bytearray()
        self._want = 8 if fmt == "png" else 2  # the PNG signature; the JPEG SOI
        self._skip = 0
        self._state = "start"
        self._crc = 0
        self._type = b""

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the file."""
        self._total += len(chunk)
        self._tail = (self._tail + chunk[-2:])[-2:]  # never a copy of the whole chunk
        if self._fmt == "webp":
            if len(self._head) < 30:
                self._head += chunk[: 30 - len(self._head)]
            return
        view = memoryview(chunk)
        png = self._fmt == "png"
        while view:
            if self._state == "done":
                if png:
                    raise ValueError("bytes after the PNG's IEND chunk")
                return  # JPEG: past the scan, only the ending is checked
            if png and self._state == "chunk" and not self._skip and not self._buf:
                view = self._whole_png_chunks(view)  # the rest, from a partial chunk on
                if not view or self._state == "done":
                    continue
            if self._skip:
                n = min(self._skip, len(view))
                if self._fmt == "png":
                    self._crc = _crc32(view[:n], self._crc)
                self._skip -= n
                view = view[n:]
                if not self._skip:
                    self._after_skip()
                continue
            n = min(self._want - len(self._buf), len(view))
            self._buf += view[:n]
            view = view[n:]
            if len(self._buf) == self._want:
                data, self._buf = bytes(self._buf), bytearray()
                self._step(data)

    def finish(self) -> tuple[int, int]:
        """The image's ``(width, height)``; ValueError when the structure is broken."""
        if self._fmt == "png" and self._state != "done":
            raise ValueError("PNG ends before its IEND chunk")
        if self._fmt == "jpeg":
            if self._state != "done" or self._tail != b"\xff\xd9":
                raise ValueError("JPEG ends before its EOI marker")
        if self._fmt == "webp":
            riff = int.from_bytes(self._head[4:8], "little") + 8
            if riff != self._total:
                raise ValueError(f"WebP RIFF length {riff} is not the file's {self._total}")
            self.size = _webp_size(bytes(self._head))
        if self.size is None:
            raise ValueError(f"{self._fmt.upper()} has no readable width and height")
        return self.size

    def _need(self, n: int, state: str) -> None:
        self._want, self._state = n, state

    def _step(self, data: bytes) -> None:
        if self._fmt == "png":
            self._png(data)
        else:
            self._jpeg(data)

    # PNG: signature, then chunks of length (4) type (4) data (length) CRC (4).
    def _png(self, data: bytes) -> None:
        state = self._state
        if state == "start":
            if data != b"\x89PNG\r\n\x1a\n":
                raise ValueError("not a PNG signature")
            self._need(8, "chunk")
        elif state == "chunk":
            length = int.from_bytes(data[:4], "big")
            if length > 2**31 - 1:
                raise ValueError("PNG chunk length out of range")
            self._type, self._crc = data[4:], _crc32(data[4:])
            if self._type == b"IHDR" and length == 13:
                self._need(8, "ihdr")  # width and height, then the rest as chunk data
                self._skip_after = 5
            else:
                self._skip = length
                self._need(4, "crc")
                if not length:
                    self._after_skip()
        elif state == "ihdr":
            self._crc = _crc32(data, self._crc)
            self.size = (int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big"))
            self._skip = self._skip_after
            self._need(4, "crc")
        elif state == "crc":
            if int.from_bytes(data, "big") != self._crc:
                raise ValueError(f"PNG chunk {self._type.decode(errors='replace')} fails its CRC")
            self._need(8, "done" if self._type == b"IEND" else "chunk")

    def _whole_png_chunks(self, view: memoryview) -> memoryview:
        """Check the PNG chunks that lie whole at the start of ``view`` in one pass each (a
        chunk is usually far smaller than a read), and return what follows them."""
        while len(view) >= 12:
            length = int.from_bytes(view[:4], "big")
            end = 12 + length
            if length > 2**31 - 1 or len(view) < end:
                break  # the byte-by-byte parse raises, or waits for the rest
            kind = bytes(view[4:8])
            if int.from_bytes(view[end - 4 : end], "big") != _crc32(view[4 : end - 4]):
                raise ValueError(f"PNG chunk {kind.decode(errors='replace')} fails its CRC")
            if kind == b"IHDR" and length == 13:
                self.size = (int.from_bytes(view[8:12], "big"), int.from_bytes(view[12:16], "big"))
            view = view[end:]
            if kind == b"IEND":
                self._type = kind
                self._need(8, "done")
                break
        return view

    def _after_skip(self) -> None:
        if self._fmt == "jpeg":
            self._need(2, "marker")

    # JPEG: SOI, then segments FF xx + length (2) + payload, up to SOS; the scan to EOI.
    def _jpeg(self, data: bytes) -> None:
        state = self._state
        if state == "start":
            if data != b"\xff\xd8":
                raise ValueError("not a JPEG start-of-image marker")
            self._need(2, "marker")
        elif state == "marker":
            if data[0] != 0xFF:
                raise ValueError("JPEG segment does not start with a marker")
            self._marker = data[1]
            if self._marker == 0xFF:  # fill byte: the marker is the next byte
                self._buf = bytearray(b"\xff")
                return
            if self._marker in _JPEG_STANDALONE:
                return
            self._need(2, "length")
        elif state == "length":
            length = int.from_bytes(data, "big")
            if length < 2:
                raise ValueError("JPEG segment length out of range")
            if self._marker in _JPEG_FRAMES and length >= 7:
                self._need(5, "frame")
                self._skip_after = length - 7
            elif self._marker == 0xDA:  # start of scan: entropy-coded data until EOI
                self._state = "done"
            else:
                self._skip = length - 2
                if not self._skip:
                    self._need(2, "marker")
        elif state == "frame":
            self.size = (int.from_bytes(data[3:5], "big"), int.from_bytes(data[1:3], "big"))
            self._skip = self._skip_after
            if not self._skip:
                self._need(2, "marker")


#: JPEG markers without a length: TEM and RST0-7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
#: Start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC): they carry the image's size.
_JPEG_FRAMES = frozenset(set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC})


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP's first 30 bytes (VP8, VP8L or VP8X), or None."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind = head[12:16]
    if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(head[26:28], "little") & 0x3FFF,
            int.from_bytes(head[28:30], "little") & 0x3FFF,
        )
    if kind == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None
