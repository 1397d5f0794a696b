"""Helpers shared by the emulator tests: input images and small HTTP shortcuts."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from PIL import Image

from fal_edit_async.emulator import Emulator

ENDPOINT = "fal-ai/gpt-image-1/edit-image"
APP_ROOT = "fal-ai/gpt-image-1"


def png_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    """A small gradient image, encoded as png."""
    image = Image.new(mode, size)
    w, h = size
    image.putdata(
        [(x * 255 // w, y * 255 // h, 128, 255)[: len(mode)] for y in range(h) for x in range(w)]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """A base64 data URI."""
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def edit_input(**overrides: Any) -> dict[str, Any]:
    """A valid edit input with a small data-URI image."""
    body: dict[str, Any] = {"prompt": "add a hat", "image_urls": [data_uri(png_bytes())]}
    body.update(overrides)
    return body


async def submit(
    http: aiohttp.ClientSession,
    emu: Emulator,
    body: Any = None,
    *,
    endpoint: str = ENDPOINT,
    **kwargs: Any,
) -> dict[str, Any]:
    """POST a submit and return the JSON answer (asserting a 200)."""
    async with http.post(emu.url_for(endpoint), json=body or edit_input(), **kwargs) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """GET a URL; return (status, JSON body, headers)."""
    async with http.get(url, **kwargs) as resp:
        return resp.status, await resp.json(), resp.headers


async def sse_items(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """Parse an SSE body: ``("data", json)`` per event, ``("comment", text)`` per comment."""
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield "data", json.loads("\n".join(data))
            data = []


async def sse_events(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every data event of an SSE body, read to its end."""
    return [item async for kind, item in sse_items(resp) if kind == "data"]


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession]]:
    """An emulator built with ``options`` (fast images) and a session that sends its key."""
    async with Emulator(fast_images=True, **options) as emu:
        async with aiohttp.ClientSession(headers=key_headers(emu)) as http:
            yield emu, http
    assert [] == emu.internal_errors


def key_headers(emu: Emulator) -> dict[str, str]:
    """The Authorization header the emulator accepts."""
    return {"Authorization": f"Key {emu.api_key}"}
