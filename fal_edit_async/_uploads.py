"""Local images made fetchable: small ones inlined as ``data:`` URIs, larger ones uploaded.

Every local image (a path or bytes) is checked before anything is sent: readable, non-empty,
a PNG, JPEG or WebP by its magic bytes, and within ``max_bytes``. A failure is an
:class:`InputError` naming the field, so nothing is uploaded or paid for.

Uploads use fal's initiate flow (what @fal-ai/client does, and fal-client's fallback)::

    POST {rest_url}/storage/upload/initiate?storage_type=fal-cdn-v3   (with the key)
         {"content_type": ..., "file_name": ...}  ->  {"upload_url", "file_url"}
    PUT  {upload_url}                                                  (never with the key)

The presigned PUT goes straight through the session, so no ``Authorization`` header is ever
added to it, whatever its origin. Uploads are deduplicated by SHA-256 for the uploader's
life: the same content, even resolved twice at once, is uploaded once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import anyio
import anyio.to_thread
import attrs

from ._core import ClientClosedError, Core
from ._exceptions import APIError, FalEditError, InputError, ProtocolError, TransportError
from ._files import CONTENT_TYPES, EXTENSIONS, safe_stem, sniff_image_format
from ._models import EditImageInput, ImageSource, is_remote_url
from ._protocol import api_error, is_transient
from ._retry import retry_kind, with_retries
from ._statistics import RetryKind

__all__ = ["Uploader"]

_URL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_READ_CHUNK = 1024 * 1024
_HEAD = 16
_STORAGE_TYPE = "fal-cdn-v3"
_ALLOWED = "a PNG, JPEG or WebP image"


@attrs.frozen
class _Local:
    """A checked local image: its bytes in memory, or its path to stream from."""

    field: str
    source: ImageSource
    size: int
    fmt: str
    data: bytes | None = None
    path: str | None = None
    digest: str = ""

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    def file_name(self) -> str:
        # The name ends up in a CDN URL: plain ASCII, unlike the names of files on disk.
        stem = _URL_UNSAFE.sub("_", safe_stem(Path(self.path).stem)) if self.path else ""
        stem = stem or self.digest[:16]
        return f"{stem}.{EXTENSIONS[self.fmt]}"

    def data_uri(self) -> str:
        assert self.data is not None
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode('ascii')}"


@attrs.frozen
class _Target:
    """Where the initiate call said to PUT the bytes, and the URL they will have."""

    upload_url: str
    file_url: str


class Uploader:
    """Resolves image sources to URLs fal can fetch; a client has one.

    Strings are passed through; bytes and files are checked, then inlined as a ``data:`` URI
    up to ``inline_threshold`` bytes, or uploaded (files streamed from disk, never read whole
    into memory). At most ``limit`` uploads run at once, or share a ``limiter``.

    Args:
        core: the client's core (the key goes only to the initiate call).
        inline_threshold: the largest image sent inline; 0 uploads every local image
            (default ``Limits.inline_bytes``).
        max_bytes: the largest image accepted (default ``Limits.max_input_bytes``).
        limit: how many uploads may run at once (default ``Limits.uploads``).
        limiter: a limiter to share instead of ``limit``.
    """

    def __init__(
        self,
        core: Core,
        *,
        inline_threshold: int | None = None,
        max_bytes: int | None = None,
        limit: int | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        limits = core.config.limits
        inline_threshold = limits.inline_bytes if inline_threshold is None else inline_threshold
        max_bytes = limits.max_input_bytes if max_bytes is None else max_bytes
        if isinstance(inline_threshold, bool) or inline_threshold < 0:
            raise ValueError(f"inline_threshold must be 0 or more, not {inline_threshold!r}")
        if isinstance(max_bytes, bool) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
        if limit is not None and limiter is not None:
            raise ValueError("pass limit or limiter, not both")
        self._core = core
        self.inline_threshold = inline_threshold
        self.max_bytes = max_bytes
        self._limiter = limiter or anyio.CapacityLimiter(limits.uploads if limit is None else limit)
        self._urls: dict[str, str] = {}  # sha256 -> file_url, for the uploader's life
        self._pending: dict[str, anyio.Event] = {}  # sha256 -> set when that upload ends

    async def resolve(self, source: ImageSource, *, field: str) -> str:
        """An http(s) URL or ``data:`` URI for one image source.

        Args:
            source: a URL or data URI (returned as is), image bytes, or a path to an image.
            field: the input field it came from, named in errors (``image_urls[0]``).

        Raises:
            InputError: the image is unreadable, empty, not an image, or too large.
            APIError: fal refused the upload.
            TransportError: the upload failed on the network, after retries.
        """
        return await self._deliver(await self._prepare(source, field))

    async def resolve_input(self, input: EditImageInput) -> EditImageInput:
        """``input`` with every image resolved; all are checked before any is uploaded."""
        if input.is_resolved:
            return input
        prepared = [
            await self._prepare(source, f"image_urls[{i}]")
            for i, source in enumerate(input.image_urls)
        ]
        return attrs.evolve(input, image_urls=await self._deliver_all(prepared))

    async def _prepare(self, source: ImageSource, field: str) -> str | _Local:
        if isinstance(source, str):
            return source
        if isinstance(source, bytes | bytearray | memoryview):
            return await self._check_bytes(bytes(source), field)
        if isinstance(source, os.PathLike):
            path = os.fspath(source)
            if isinstance(path, str):
                return await anyio.to_thread.run_sync(self._check_file, source, path, field)
        raise InputError(field, source, "a URL string, a data: URI, a Path or bytes")

    async def _check_bytes(self, data: bytes, field: str) -> _Local:
        if not data:
            raise InputError(field, data, "non-empty image bytes")
        if len(data) > self.max_bytes:
            raise self._too_big(field, data)
        fmt = _image_format(data[:_HEAD], field, data)
        local = _Local(field, data, len(data), fmt, data=data)
        if len(data) <= self.inline_threshold:
            return local
        digest = await anyio.to_thread.run_sync(_sha256, data)
        return attrs.evolve(local, digest=digest)

    def _check_file(self, source: ImageSource, path: str, field: str) -> _Local:
        """Check a file; keep it when small, else hash it (blocking: runs in a thread)."""
        if _file_size(source, path, field) > self.max_bytes:
            raise self._too_big(field, source)
        try:
            with open(path, "rb") as f:
                # At least _HEAD bytes: the format is sniffed from them (inline_threshold=0).
                data = f.read(max(self.inline_threshold + 1, _HEAD))
                if not data:
                    raise InputError(field, source, f"{_ALLOWED} file (the file is empty)")
                fmt = _image_format(data[:_HEAD], field, source)
                if len(data) <= self.inline_threshold:
                    return _Local(field, source, len(data), fmt, data=data, path=path)
                digest, size = hashlib.sha256(data), len(data)
                while size <= self.max_bytes and (chunk := f.read(_READ_CHUNK)):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise _unreadable(field, source, exc) from exc
        if size > self.max_bytes:  # it grew since it was measured
            raise self._too_big(field, source)
        return _Local(field, source, size, fmt, path=path, digest=digest.hexdigest())

    def _too_big(self, field: str, source: ImageSource) -> InputError:
        return InputError(field, source, f"{_ALLOWED} of at most {self.max_bytes} bytes")

    async def _deliver_all(self, prepared: Sequence[str | _Local]) -> list[str]:
        """Deliver every image concurrently; the first failure cancels the rest."""
        urls: list[str] = [""] * len(prepared)
        failures: list[FalEditError | ClientClosedError] = []

        async def one(i: int, item: str | _Local, scope: anyio.CancelScope) -> None:
            try:
                urls[i] = await self._deliver(item)
            except (FalEditError, ClientClosedError) as exc:  # closed: raised as it is too
                failures.append(exc)
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(prepared):
                tg.start_soon(one, i, item, tg.cancel_scope)
        if failures:
            raise failures[0]  # a plain error, as resolve() raises, not a group
        return urls

    async def _deliver(self, item: str | _Local) -> str:
        if isinstance(item, str):
            return item
        if item.size <= self.inline_threshold:
            self._core.stats.inlined += 1
            return item.data_uri()
        return await self._upload_once(item)

    async def _upload_once(self, local: _Local) -> str:
        """Upload unless this content was uploaded already or is being uploaded right now."""
        while (pending := self._pending.get(local.digest)) is not None:
            await pending.wait()  # if that upload failed, the loop lets this one try
        if (url := self._urls.get(local.digest)) is not None:
            self._core.stats.upload_dedup += 1
            return url
        done = self._pending[local.digest] = anyio.Event()
        try:
            url = await self._upload(local)
            self._urls[local.digest] = url
            return url
        finally:
            del self._pending[local.digest]
            done.set()

    async def _upload(self, local: _Local) -> str:
        core = self._core
        policy = core.config.retry

        def classify(exc: Exception) -> RetryKind | None:
            return "upload" if retry_kind(exc, submit=False, policy=policy) else None

        async with self._limiter:
            target = await with_retries(
                lambda: self._initiate(local), policy=policy, stats=core.stats, classify=classify
            )
            await with_retries(
                lambda: self._put(target, local),
                policy=policy,
                stats=core.stats,
                classify=classify,
            )
        core.stats.uploads += 1
        return target.file_url

    async def _initiate(self, local: _Local) -> _Target:
        resp = await self._core.request(
            "POST",
            f"{self._core.config.rest_url}/storage/upload/initiate",
            params={"storage_type": _STORAGE_TYPE},
            json={"content_type": local.content_type, "file_name": local.file_name()},
        )
        resp.raise_for_status()
        return _target(resp.json("upload initiate"))

    async def _put(self, target: _Target, local: _Local) -> None:
        """PUT the bytes to the presigned URL, with no ``Authorization`` whatever its origin."""
        if local.data is not None:
            await self._send_put(target.upload_url, local, _MemoryChunks(local.data))
            return
        assert local.path is not None
        body = _FileChunks(local.path, local.size)
        try:
            await self._send_put(target.upload_url, local, body)
        except TransportError as exc:
            if body.changed:
                raise _changed(local) from exc
            raise
        finally:
            await body.aclose()
        if body.changed or body.digest != local.digest:
            raise _changed(local)

    async def _send_put(self, url: str, local: _Local, body: _MemoryChunks | _FileChunks) -> None:
        headers = {"Content-Type": local.content_type, "Content-Length": str(local.size)}
        # auth=False: a presigned URL may sit on the REST origin, and must not get the key.
        resp = await self._core.request("PUT", url, data=body, headers=headers, auth=False)
        status, resp_headers, answer = resp.status, resp.headers, resp.body
        if 200 <= status < 300:
            return
        if is_transient(status):
            raise api_error(status, resp_headers, answer)  # the retryable kinds
        # The storage host is not fal's API: a 403 here is an expired URL, not a bad key.
        raise APIError("the storage host refused the upload", status=status, body=answer[:300])


class _MemoryChunks:
    """A PUT body from memory, in slices: aiohttp warns that one large write blocks the loop."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._at = 0

    def __aiter__(self) -> _MemoryChunks:
        return self

    async def __anext__(self) -> memoryview:
        if self._at >= len(self._view):
            raise StopAsyncIteration
        chunk = self._view[self._at : self._at + _READ_CHUNK]
        self._at += len(chunk)
        return chunk


class _FileChunks:
    """A PUT body read from disk in chunks, each read (and hashed) in a worker thread.

    ``changed`` tells that the file is no longer the size it had when it was checked; the
    digest, once the body is sent, tells whether its content changed.
    """

    def __init__(self, path: str, size: int) -> None:
        self._path = path
        self._left = size
        self._file: BinaryIO | None = None
        self._closed = False
        self._hash = hashlib.sha256()
        self.changed = False

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def _read(self, n: int) -> bytes:
        if self._file is None:
            self._file = open(self._path, "rb")
        chunk = self._file.read(n)
        self._hash.update(chunk)
        return chunk

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._left <= 0 or self._closed:
            raise StopAsyncIteration
        chunk = await anyio.to_thread.run_sync(self._read, min(_READ_CHUNK, self._left))
        if not chunk:
            self.changed = True
            raise OSError(f"{self._path} shrank while it was being uploaded")
        self._left -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        self._closed = True
        file, self._file = self._file, None
        if file is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(file.close)


def _target(payload: Any) -> _Target:
    if isinstance(payload, dict):
        upload_url, file_url = payload.get("upload_url"), payload.get("file_url")
        if _is_http(upload_url) and _is_http(file_url):
            return _Target(upload_url, file_url)
    raise ProtocolError("upload initiate answer lacks upload_url and file_url", payload=payload)


def _is_http(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and not value.startswith("data:") and is_remote_url(value)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _image_format(head: bytes, field: str, source: object) -> str:
    fmt = sniff_image_format(head)
    if fmt not in CONTENT_TYPES:
        found = f"a {fmt.upper()}" if fmt else "not an image"
        raise InputError(field, source, f"{_ALLOWED} (the content is {found})")
    return fmt


def _file_size(source: ImageSource, path: str, field: str) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _unreadable(field, source, exc) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(field, source, f"{_ALLOWED} file (this is a directory)")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(field, source, f"{_ALLOWED} file (this is not a regular file)")
    if st.st_size == 0:
        raise InputError(field, source, f"{_ALLOWED} file (the file is empty)")
    return st.st_size


def _changed(local: _Local) -> InputError:
    return InputError(local.field, local.source, f"{_ALLOWED} that does not change while uploading")


def _unreadable(field: str, source: ImageSource, exc: OSError) -> InputError:
    reason = {
        FileNotFoundError: "no such file",
        PermissionError: "permission denied",
        IsADirectoryError: "this is a directory",
    }.get(type(exc), exc.strerror or str(exc))
    return InputError(field, source, f"a readable image file ({reason})")
