"""Output images to disk: streamed, verified, and renamed into place only when whole.

Each file is written to a temp file in the target folder (``.<stem>_<index>.<random>.part``),
checked (status, ``Content-Type``, length, magic bytes, ``max_bytes``) and only then renamed
over its final name with ``os.replace``. Whatever goes wrong, cancellation included, the temp
file is removed, so the folder never holds a partial file under either name.

The final name is ``<safe(stem)>_<index>.<ext>``, with the extension taken from the format the
bytes really are. The server's ``file_name`` never reaches the path. An existing file with that
name is replaced, so running the same batch again rewrites the same names (idempotent).

No ``Authorization`` header is ever sent: downloads go through ``Core.stream(auth=False)``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

import anyio
import anyio.to_thread
import attrs

from ._config import DEFAULT_LIMITS
from ._core import ClientClosedError, Core
from ._exceptions import DownloadError, TransportError
from ._files import (
    CONTENT_TYPES,
    EXTENSIONS,
    FileIdentity,
    ImageCheck,
    TempFile,
    safe_stem,
    sniff_image_format,
)
from ._models import DownloadedFile, ImageFile
from ._protocol import is_transient, parse_retry_after
from ._retry import with_retries
from ._statistics import RetryKind
from ._transport import StreamResponse

__all__ = ["download_all", "download_image", "download_outcomes"]

T = TypeVar("T")

_ACCEPTED_TYPES = frozenset({*CONTENT_TYPES.values(), "image/jpg"})
# Bytes gathered before one hop to a worker thread, where writes go through threads. A hop
# costs more CPU than writing a few MiB; memory stays bounded per download in flight.
_FLUSH = 1024 * 1024  # per write batch: memory stays at about this per download
_SNIFF_LEN = 12
#: A file this small is written, checked and renamed on the event loop even in a slow
#: folder (never with fsync): a thread hop costs more than the rest of it.
_INLINE_MAX = 64 * 1024
#: A disk operation on the event loop that took longer than this was slow (seconds)...
_SLOW_OPERATION = 0.005
#: ... and after this many slow ones, a folder's writes go through worker threads for the
#: rest of the process (see _InlineDisk).
_SLOW_OPERATIONS = 2


class _Transient(Exception):
    """A failure another attempt may fix (truncated body, 408/429/5xx); never escapes."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


@attrs.frozen
class _Target:
    """Where one image goes and what it must satisfy."""

    folder: Path
    prefix: str
    url: str
    file_size: int | None
    max_bytes: int | None
    fsync: bool
    checksum: bool
    size: tuple[int | None, int | None] = (None, None)  # the width and height fal reported
    replace: bool = True  # False: never over a file someone else wrote meanwhile
    #: Names (with extension) a journal says this image was written to: see TempFile.commit.
    ours: frozenset[str] = frozenset()
    #: Where to note the identity of each file published: what a batch may delete again.
    published: list[FileIdentity] | None = None

    def check_structure(self, check: ImageCheck | None) -> None:
        """The file is whole as its format defines it, and as large as fal said it is."""
        if check is None:
            raise _Transient("not a whole image: no bytes were checked")
        try:
            width, height = check.finish()
        except ValueError as exc:
            raise _Transient(f"not a whole image: {exc}") from None
        expected_width, expected_height = self.size
        for name, got, want in (
            ("width", width, expected_width),
            ("height", height, expected_height),
        ):
            if want is not None and got != want:
                msg = f"the image's {name} is {got}, but fal reported {want}"
                raise DownloadError(msg, url=self.url)

    def temp_file(self) -> TempFile:
        return TempFile(self.folder, self.prefix, fsync=self.fsync, checksum=self.checksum)

    def final_path(self, fmt: str) -> Path:
        return self.folder / f"{self.prefix}.{EXTENSIONS[fmt]}"

    def commit(self, temp: TempFile, fmt: str) -> Callable[..., str | None]:
        """``temp.commit``, told what to do with a file already at the final name; the
        file it publishes is noted in ``published``, when given."""
        ours = f"{self.prefix}.{EXTENSIONS[fmt]}" in self.ours
        published = self.published

        def commit(*args: Any) -> str | None:
            digest = temp.commit(*args, replace=self.replace, ours=ours)
            if published is not None and temp.published is not None:
                published.append(temp.published)
            return digest

        return commit

    def result(self, final: Path, fmt: str, size: int, digest: str | None) -> DownloadedFile:
        return DownloadedFile(path=final, size=size, sha256=digest, content_type=CONTENT_TYPES[fmt])

    def check_announced(self, size: int | None, what: str) -> None:
        if size is not None and self.max_bytes is not None and size > self.max_bytes:
            msg = f"{what} is {size} bytes, over max_bytes={self.max_bytes}"
            raise DownloadError(msg, url=self.url)


async def download_image(
    core: Core,
    image: ImageFile,
    dest: Path,
    stem: str,
    index: int,
    *,
    max_bytes: int | None = None,
    fsync: bool = False,
    checksum: bool = False,
    base: str | None = None,
    replace: bool = True,
    ours: Collection[str] = (),
    published: list[FileIdentity] | None = None,
) -> DownloadedFile:
    """Download one output image into ``dest`` as ``<safe(stem)>_<index>.<ext>``.

    http(s) URLs are streamed without any ``Authorization`` header, following redirects;
    ``data:`` URIs (sync mode) are decoded. Either way the file must be a PNG, JPEG or WebP
    whose length matches ``Content-Length`` and ``image.file_size`` when given. Truncated
    bodies, connection failures and 408/429/5xx are retried per ``RetryPolicy``, each retry
    counted as a ``download`` retry; anything else fails at once. ``dest`` is created if
    missing; an existing file with the final name is replaced atomically.

    Args:
        core: the client's core.
        image: the image as fal described it.
        dest: the folder to write into.
        stem: the name to give the file, made safe by :func:`safe_stem`.
        index: the image's position, appended to the stem.
        max_bytes: refuse (without retrying) a file larger than this.
        fsync: flush the file to the disk before renaming it into place, so that it survives
            a power loss too (not only a crash of this process). Slower.
        base: the whole name without its extension, already safe and claimed (a batch's
            name template), instead of ``<safe(stem)>_<index>``.
        replace: False: a file another process wrote at the final name meanwhile is kept,
            and this download fails (a batch's name is claimed; a clash is another run's).
        ours: final names (with extension) a batch journal says this image was written to
            before: with ``replace=False``, a file there with exactly these bytes is kept
            (the download succeeds), one that is no whole image any more is repaired, and
            any other is someone else's, as above.
        checksum: also compute the file's SHA-256 (``sha256`` is None without). Length and
            format are verified either way; the hash costs about a third of the throughput,
            so it is off unless something will check it later (a batch journal turns it on).
            It costs about as much CPU as the download itself.

    Returns:
        The verified file on disk.

    Raises:
        DownloadError: the image could not be downloaded, verified or written; no file is
            left behind.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative integer, not {index!r}")
    prefix = base if base is not None else f"{safe_stem(stem)}_{index}"
    target = _Target(
        dest if isinstance(dest, Path) else Path(dest),
        prefix,
        image.url,
        image.file_size,
        max_bytes,
        fsync,
        checksum,
        size=(image.width, image.height),
        replace=replace,
        ours=frozenset(ours),
        published=published,
    )
    target.check_announced(image.file_size, "file_size")
    if image.url.startswith("data:"):
        result = await anyio.to_thread.run_sync(_write_data_uri, target)
    elif image.url.startswith(("http://", "https://")):
        fetch = functools.partial(_fetch, core, target)
        result = await _retrying(fetch, core=core, url=image.url)
    else:
        raise DownloadError("not an http(s) URL or a data: URI", url=image.url)
    core.stats.downloads += 1
    return result


async def _retrying(call: Callable[[], Awaitable[T]], *, core: Core, url: str) -> T:
    policy = core.config.retry

    def classify(exc: Exception) -> RetryKind | None:
        return "download" if isinstance(exc, _Transient | TransportError) else None

    try:
        return await with_retries(call, policy=policy, stats=core.stats, classify=classify)
    except (_Transient, TransportError) as exc:  # every try failed, each one retryable
        tries = policy.max_attempts
        raise DownloadError(f"{_reason(exc)} (gave up after {tries} tries)", url=url) from exc
    except ClientClosedError as exc:  # closed under the download: this image's failure
        raise DownloadError(f"not downloaded: {exc}", url=url) from exc


def _reason(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, TransportError) and exc.url:
        return text.removesuffix(f" ({exc.url})")
    return text


async def _fetch(core: Core, target: _Target) -> DownloadedFile:
    # identity: Content-Length must count the bytes we write, not a compressed form of them.
    headers = {"Accept-Encoding": "identity"}
    async with core.stream(target.url, auth=False, headers=headers) as resp:
        status = resp.status
        if is_transient(status):
            raise _Transient(f"HTTP {status}", parse_retry_after(resp.headers.get("Retry-After")))
        if status != 200:
            raise DownloadError(f"HTTP {status}", url=target.url)
        if resp.content_type not in _ACCEPTED_TYPES:
            msg = f"Content-Type {resp.content_type!r} is not an image"
            raise DownloadError(msg, url=target.url)
        length = _body_length(resp, target.url)
        target.check_announced(length, "Content-Length")
        temp = target.temp_file()
        try:
            return await _stream_to(temp, resp.aiter_bytes(), target, length)
        finally:
            # A write in a worker thread always runs to its end, even when this task is
            # cancelled, so the file's state is settled here; the cleanup must finish too.
            if temp.left_behind:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(temp.discard)


def _body_length(resp: StreamResponse, url: str) -> int | None:
    """The length of the body as read, when the server announced it.

    ``Content-Length`` counts the bytes on the wire. A server that compresses anyway (gzip
    despite ``Accept-Encoding: identity``) announces the encoded length, and the transport
    hands us the decoded body: that length says nothing of what is written here (comparing
    them took a whole file for a truncated one), and the transport still checks it against
    the encoded bytes it read. A malformed ``Content-Length`` fails the file.
    """
    raw = resp.headers.get("Content-Length")
    if raw is not None and resp.content_length is None:
        raise DownloadError(f"Content-Length {raw!r} is not a number of bytes", url=url)
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    return resp.content_length if encoding in ("", "identity") else None


class _InlineDisk:
    """Which folders get their writes on the event loop, and which through worker threads.

    A write into the page cache is a memory copy: tens of microseconds for a 256 KiB chunk,
    where a hop to a worker thread and back costs several times that in GIL hand-offs with
    the loop (a 4 MB file in 1 MiB batches through threads took a third more CPU than the
    same writes on the loop: 7.2 against 5.4 ms). So chunks are written, checked and
    renamed on the loop, and each operation is timed: a folder whose operations block (a
    network share, a disk throttling dirty pages, a full USB stick) moves to threads after
    ``_SLOW_OPERATIONS`` slow ones, so the loop stalls at most that often per folder.
    ``fsync`` always goes through threads, as it waits for the disk by design, and so does
    ``checksum``: SHA-256 costs more than the write, and in a thread it runs beside the loop
    (measured: 14 % more throughput than hashing on the loop).
    """

    def __init__(self) -> None:
        self._slow: dict[Path, int] = {}

    def allowed(self, target: _Target) -> bool:
        if target.fsync or target.checksum:
            return False
        return self._slow.get(target.folder, 0) < _SLOW_OPERATIONS

    def run(self, target: _Target, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` on the loop (through :func:`_disk_errors`), its time noted."""
        started = time.perf_counter()
        try:
            return _disk_errors(target, func, *args)
        finally:
            if time.perf_counter() - started > _SLOW_OPERATION:
                self._slow[target.folder] = self._slow.get(target.folder, 0) + 1


_INLINE = _InlineDisk()


async def _stream_to(
    temp: TempFile, chunks: AsyncIterable[bytes], target: _Target, length: int | None
) -> DownloadedFile:
    """Write the body to ``temp`` (see :class:`_InlineDisk`), verify it, and rename it."""
    fmt: str | None = None
    head = b""
    pending: list[bytes] = []
    buffered = received = 0
    inline = _INLINE.allowed(target)
    async for chunk in chunks:
        received += len(chunk)
        if target.max_bytes is not None and received > target.max_bytes:
            raise DownloadError(f"body exceeds max_bytes={target.max_bytes}", url=target.url)
        # Stop at once when the body outgrows the size fal announced, rather than writing an
        # endless body to disk before the length check below (there may be no max_bytes).
        if target.file_size is not None and received > target.file_size:
            msg = f"body exceeds the file_size={target.file_size} fal reported"
            raise DownloadError(msg, url=target.url)
        pending.append(chunk)
        buffered += len(chunk)
        if fmt is None:
            head += chunk[: _SNIFF_LEN - len(head)]
            if len(head) < _SNIFF_LEN:
                continue  # nothing is written before the format is known
            fmt = _format_of(head, target.url)  # refuse a non-image at its first bytes
            temp.check = ImageCheck(fmt)  # fed as the bytes are written
        if inline:
            _INLINE.run(target, temp.write, pending)
            pending, buffered = [], 0
            inline = _INLINE.allowed(target)
        elif buffered >= _FLUSH:
            await _on_disk(target, temp.write, pending)
            pending, buffered = [], 0
    if fmt is None:  # a body shorter than the sniffed head
        fmt = _format_of(head, target.url)
        temp.check = ImageCheck(fmt)
    # aiohttp raises on a body cut short of Content-Length; this also covers file_size.
    for expected in (length, target.file_size):
        if expected is not None and received != expected:
            raise _Transient(f"body has {received} bytes, expected {expected}")
    check = temp.check
    final = target.final_path(fmt)
    args = (pending, final, lambda: target.check_structure(check))
    commit = target.commit(temp, fmt)
    small = received <= _INLINE_MAX and not target.fsync and not temp.left_behind
    if small or _INLINE.allowed(target):
        digest = _INLINE.run(target, commit, *args)
    else:
        digest = await _on_disk(target, commit, *args)
    return target.result(final, fmt, received, digest)


async def _on_disk(target: _Target, func: Callable[..., T], *args: object) -> T:
    """Run a blocking file operation in a thread; a disk error is this image's failure.

    Only here: a network ``OSError`` raised while reading the body must stay retryable.
    """
    return await anyio.to_thread.run_sync(_disk_errors, target, func, *args)


def _disk_errors(target: _Target, func: Callable[..., T], *args: object) -> T:
    """``func(*args)``, its disk error this image's failure, its structure error retryable."""
    try:
        return func(*args)
    except FileExistsError as exc:
        msg = (
            f"{exc.filename2 or exc.filename} was written by another process meanwhile; it is "
            "kept, and a new run names this output anew"
        )
        raise DownloadError(msg, url=target.url) from exc
    except OSError as exc:
        raise DownloadError(f"could not write the file: {exc}", url=target.url) from exc
    except ValueError as exc:  # the structure check, as the bytes were written
        raise _Transient(f"not a whole image: {exc}") from None


def _format_of(head: bytes, url: str) -> str:
    fmt = sniff_image_format(head)
    if fmt not in EXTENSIONS:
        raise DownloadError("body is not a PNG, JPEG or WebP image", url=url)
    return fmt


def _write_data_uri(target: _Target) -> DownloadedFile:
    """Decode a ``data:`` URI and write it like a download (blocking: runs in a thread)."""
    data = _decode_data_uri(target)
    target.check_announced(len(data), "decoded data")
    if target.file_size is not None and len(data) != target.file_size:
        msg = f"data has {len(data)} bytes, but fal reported file_size={target.file_size}"
        raise DownloadError(msg, url=target.url)
    fmt = _format_of(data[:_SNIFF_LEN], target.url)
    check = ImageCheck(fmt)
    try:
        check.feed(data)
        target.check_structure(check)
    except (ValueError, _Transient) as exc:  # a data URI does not change on a retry
        raise DownloadError(str(exc), url=target.url) from None
    temp, final = target.temp_file(), target.final_path(fmt)
    try:
        digest = target.commit(temp, fmt)([data], final)
    except OSError as exc:
        raise DownloadError(f"could not write the file: {exc}", url=target.url) from exc
    finally:
        temp.discard()
    return target.result(final, fmt, len(data), digest)


def _decode_data_uri(target: _Target) -> bytes:
    header, comma, payload = target.url[len("data:") :].partition(",")
    if not comma:
        raise DownloadError("malformed data: URI (no comma)", url=target.url)
    mime, *params = (p.strip().lower() for p in header.split(";"))
    if mime not in _ACCEPTED_TYPES:
        msg = f"data: URI type {mime or 'text/plain'!r} is not an image"
        raise DownloadError(msg, url=target.url)
    if "base64" in params:
        # 4 base64 characters carry 3 bytes: refuse an oversized payload before decoding it.
        target.check_announced(len(payload) * 3 // 4, "decoded data")
        try:
            return base64.b64decode(b"".join(unquote_to_bytes(payload).split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DownloadError(f"data: URI has invalid base64: {exc}", url=target.url) from exc
    return unquote_to_bytes(payload)


async def download_outcomes(
    core: Core,
    images: Sequence[ImageFile],
    dest: Path,
    stem: str,
    *,
    limiter: AbstractAsyncContextManager[object],
    max_bytes: int | None = None,
    fsync: bool = False,
    checksum: bool = False,
    names: Sequence[str] | None = None,
    replace: bool = True,
    ours: Collection[str] = (),
    published: list[FileIdentity] | None = None,
) -> list[DownloadedFile | DownloadError]:
    """Download several images concurrently under ``limiter``; one entry per image, in order:
    the file, or its error. One failure never stops the others. ``names`` gives each file's
    name without extension (see :func:`download_image`'s ``base``, ``replace`` and
    ``ours``)."""
    results: list[DownloadedFile | DownloadError | None] = [None] * len(images)
    fetch = functools.partial(
        download_image,
        core,
        max_bytes=max_bytes,
        fsync=fsync,
        checksum=checksum,
        replace=replace,
        ours=frozenset(ours),
        published=published,
    )

    async def one(i: int, image: ImageFile) -> None:
        async with limiter:
            try:
                base = None if names is None else names[i]
                results[i] = await fetch(image, dest, stem, i, base=base)
            except DownloadError as exc:
                exc.add_note(f"image {i} of {len(images)} (stem {stem!r})")
                results[i] = exc

    if len(images) == 1:  # the common case: no task group to start and wait for
        await one(0, images[0])
    else:
        async with anyio.create_task_group() as tg:
            for i, image in enumerate(images):
                tg.start_soon(one, i, image)
    return [r for r in results if r is not None]


async def download_all(
    core: Core,
    images: Sequence[ImageFile],
    dest: Path,
    stem: str,
    *,
    limit: int | None = None,
    limiter: anyio.CapacityLimiter | None = None,
    max_bytes: int | None = None,
    fsync: bool = False,
    checksum: bool = False,
) -> list[DownloadedFile]:
    """Download several images concurrently; image ``i`` becomes ``<stem>_<i>.<ext>``.

    At most ``limit`` downloads run at once (default ``Limits().downloads``), or pass a shared
    ``limiter`` to bound several batches together. One failure never stops the others.

    Args:
        core: the client's core.
        images: the images, in output order.
        dest: the folder to write into.
        stem: the common name stem.
        limit: how many downloads may run at once.
        limiter: a limiter to share instead of ``limit``.
        max_bytes: refuse any file larger than this.
        fsync: flush each file to the disk before renaming it into place.
        checksum: also compute each file's SHA-256 (see :func:`download_image`).

    Returns:
        The files, in image order.

    Raises:
        ExceptionGroup: of the :class:`DownloadError` of each failed image, raised after every
            download ended; the files that succeeded stay on disk.
    """
    if limit is not None and limiter is not None:
        raise ValueError("pass limit or limiter, not both")
    lim = limiter or anyio.CapacityLimiter(DEFAULT_LIMITS.downloads if limit is None else limit)
    done = await download_outcomes(
        core, images, dest, stem, limiter=lim, max_bytes=max_bytes, fsync=fsync, checksum=checksum
    )
    errors = [r for r in done if isinstance(r, DownloadError)]
    if errors:
        raise ExceptionGroup(f"{len(errors)} of {len(images)} downloads failed", errors)
    return [r for r in done if isinstance(r, DownloadedFile)]
