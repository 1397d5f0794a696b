"""Image files on disk: formats, safe names, and temp files renamed into place only when whole.

Pure helpers plus :class:`TempFile`, whose methods block (callers run them in a worker thread).
Both uploads (checking inputs) and downloads (writing outputs) use these, so one module decides
what an image is and what a name may contain.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CONTENT_TYPES",
    "EXTENSIONS",
    "TempFile",
    "remove_stale_parts",
    "safe_stem",
    "sniff_image_format",
]

#: The formats the edit model reads and writes, with their file extension and content type.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

_MAX_STEM = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_STALE_PART = re.compile(r"^\.[A-Za-z0-9._-]+_\d+\.[0-9a-f]{12}\.part$")
_TEMP_COUNTER = itertools.count()


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
    """A file name stem that stays inside its folder: ``[A-Za-z0-9._-]`` only, never empty.

    Other characters (separators, NUL, spaces) become ``_``, leading dots are dropped (no
    hidden files, no ``..``), and the result is capped at 100 characters.
    """
    cleaned = _UNSAFE.sub("_", stem).lstrip(".")[:_MAX_STEM]
    return cleaned or "image"


def remove_stale_parts(folder: Path) -> int:
    """Delete temp files a killed run left in ``folder``; returns how many.

    Only names :class:`TempFile` writes (``.<stem>_<index>.<12 hex>.part``) are touched.
    """
    removed = 0
    try:
        candidates = list(folder.iterdir())
    except OSError:
        return 0
    for path in candidates:
        if _STALE_PART.match(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _temp_suffix() -> str:
    """12 hex digits unique to this process and file: pid, then a counter.

    Not random on purpose: ``secrets`` costs a getrandom syscall per file (measurable at
    1 GB/s), and uniqueness is all that matters, since temp files are created exclusively.
    """
    return f"{os.getpid() & 0xFFFF:04x}{next(_TEMP_COUNTER) & 0xFFFFFFFF:08x}"


class TempFile:
    """A ``.part`` file next to its final name; every method blocks and runs in a thread.

    The file is created by the first write, and the last batch is written by ``commit``:
    thread hops cost more than the writes, so a small image takes exactly one.
    """

    def __init__(self, folder: Path, prefix: str, *, fsync: bool, checksum: bool) -> None:
        self.path = folder / f".{prefix}.{_temp_suffix()}.part"
        self.committed = False
        self._fsync = fsync
        self._hash = hashlib.sha256() if checksum else None
        self._file: BinaryIO | None = None

    def write(self, chunks: list[bytes]) -> None:
        """Append ``chunks``, creating the file (exclusively) on the first call."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Exclusive create: a clash with another download fails, never interleaves.
            self._file = open(self.path, "xb")
        if self._hash is not None:
            for chunk in chunks:
                self._hash.update(chunk)  # releases the GIL, like the write
        self._file.writelines(chunks)

    def commit(self, chunks: list[bytes], final: Path) -> str | None:
        """Write the last batch and rename the file over ``final``; returns the SHA-256."""
        self.write(chunks)
        assert self._file is not None
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, final)
        self.committed = True
        return None if self._hash is None else self._hash.hexdigest()

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
