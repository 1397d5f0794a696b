"""The stand-in for gpt-image-1: fetch the inputs, render the outputs, publish them.

Inputs may be ``data:`` URIs, files on the emulator's own CDN (read directly, never downloaded,
so a held download gate cannot block a job), or http(s) URLs fetched with the emulator's
session. Pillow work runs in a worker thread.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio.to_thread
import attrs

from ._images import (
    EXTENSIONS,
    EditSpec,
    ImageInputError,
    Rendered,
    data_uri,
    decode_data_uri,
    edit,
    placeholder,
    stamp,
    transform_of,
)
from ._profile import is_loopback_url
from ._state import EmulatedJob
from ._storage import FileStore
from ._validation import field_error

__all__ = ["EditModel", "InputImageError"]

# Echo at most this much of a bad input back in a 422 (data URIs can be megabytes).
_INPUT_ECHO = 120
_CHUNK = 1 << 16


class EditModel:
    """Runs one validated job's edit and returns its ``images`` list.

    Args:
        store: where outputs are published (and uploaded inputs are read from).
        fast_images: serve cached placeholders instead of editing the input.
        output_bytes: pad each output to about this many bytes.
        fetch_timeout: seconds allowed to fetch an http(s) input.
        max_fetch_bytes: the largest input fetched over http(s).
        refuse_loopback: refuse input URLs on a loopback address, as fal cannot reach them.
    """

    def __init__(
        self,
        *,
        store: FileStore,
        fast_images: bool,
        output_bytes: int | None,
        fetch_timeout: float,
        max_fetch_bytes: int,
        refuse_loopback: bool = False,
    ) -> None:
        self.store = store
        self.fast_images = fast_images
        self.output_bytes = output_bytes
        self.fetch_timeout = fetch_timeout
        self.max_fetch_bytes = max_fetch_bytes
        self.refuse_loopback = refuse_loopback
        self.session: aiohttp.ClientSession | None = None
        self._fast_cache: dict[EditSpec, Rendered] = {}
        self._fast_lock = anyio.Lock()

    async def run(self, job: EmulatedJob) -> list[dict[str, Any]]:
        """Render and publish the job's outputs.

        Raises:
            InputImageError: an input could not be fetched or decoded.
        """
        body = job.input
        spec = EditSpec(
            prompt=body["prompt"],
            image_size=body.get("image_size", "auto"),
            output_format=body.get("output_format", "png"),
            transparent=body.get("background") == "transparent",
            output_bytes=self.output_bytes,
        )
        # Every input must be reachable (in fast mode too); the edit uses the first one.
        sources = [await self._fetch(i, url) for i, url in enumerate(body["image_urls"])]
        if self.fast_images:
            rendered = await self._placeholder(spec)
        else:
            rendered = await self._edit(sources[0], body["image_urls"][0], spec)
        return [
            self._publish(job, rendered, index, spec, bool(body.get("sync_mode", False)))
            for index in range(body.get("num_images", 1))
        ]

    async def _placeholder(self, spec: EditSpec) -> Rendered:
        # Only the kind of edit shapes a placeholder; keying on it keeps the cache tiny and
        # hit-only after warm-up, however many distinct prompts a benchmark sends.
        spec = attrs.evolve(spec, prompt=transform_of(spec.prompt))
        cached = self._fast_cache.get(spec)
        if cached is None:
            # One render per kind: without the lock, 256 first jobs rendered it 129 times.
            async with self._fast_lock:
                cached = self._fast_cache.get(spec)
                if cached is None:
                    cached = await anyio.to_thread.run_sync(placeholder, spec)
                    self._fast_cache[spec] = cached
        return cached

    async def _edit(self, source: bytes, url: str, spec: EditSpec) -> Rendered:
        try:
            return await anyio.to_thread.run_sync(edit, source, spec)
        except ImageInputError as exc:
            raise InputImageError(0, url, str(exc)) from exc

    def _publish(
        self, job: EmulatedJob, rendered: Rendered, index: int, spec: EditSpec, sync: bool
    ) -> dict[str, Any]:
        name = f"{job.request_id}_{index}.{EXTENSIONS[spec.output_format]}"
        data = stamp(rendered.data, spec.output_format, f"{job.request_id}_{index}".encode())
        if sync:
            url = data_uri(rendered.content_type, data)
        else:
            url = self.store.put(data, rendered.content_type, name)
            job.output_urls.append(url)
        return {
            "url": url,
            "content_type": rendered.content_type,
            "file_name": name,
            "file_size": len(data),
            "width": rendered.width,
            "height": rendered.height,
        }

    async def _fetch(self, index: int, url: str) -> bytes:
        """The bytes of one input image: a data URI, one of our files, or an http(s) GET."""
        try:
            if url.startswith("data:"):
                return decode_data_uri(url)
            stored = self.store.lookup_url(url)
            if stored is not None:
                return stored.data
            if url.startswith(self.store.cdn_url + "/"):
                # Our own CDN, but no such file; don't GET it (a held download gate would hang).
                raise ImageInputError("no such file on this CDN")
            if self.refuse_loopback and is_loopback_url(url):
                raise ImageInputError("the URL is on a loopback address, unreachable from fal")
            return await self._get(url)
        except ImageInputError as exc:
            raise InputImageError(index, url, str(exc)) from exc

    async def _get(self, url: str) -> bytes:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout)
        try:
            async with self.session.get(url, timeout=timeout) as response:
                if response.status != 200:
                    raise ImageInputError(f"HTTP {response.status} fetching the image")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > self.max_fetch_bytes:
                        raise ImageInputError("image too large")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ImageInputError(f"cannot fetch the image: {exc!r}") from exc
        return b"".join(chunks)


class InputImageError(Exception):
    """An input image could not be used; carries the 422 detail entry for it."""

    def __init__(self, index: int, url: str, reason: str) -> None:
        echo = url if len(url) <= _INPUT_ECHO else url[:_INPUT_ECHO] + "..."
        self.detail = field_error(
            ["image_urls", index],
            f"Could not load the image: {reason}",
            "image_load_error",
            echo,
        )
        super().__init__(reason)
