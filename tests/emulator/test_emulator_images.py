"""Output images: real files of the requested size and format, served by the CDN origin."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from fal_edit_async.emulator import Emulator

from .emu_helpers import data_uri, edit_input, get_json, png_bytes, submit


@pytest.fixture
async def real() -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession]]:
    """An emulator that really edits the input with Pillow, and a keyed session."""
    async with Emulator(workers=4) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            yield emu, http


async def run_job(emu: Emulator, http: aiohttp.ClientSession, **overrides: Any) -> Any:
    """Submit an edit, wait for it, and return (status code, result body)."""
    job = await submit(http, emu, edit_input(**overrides))
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    code, body, _ = await get_json(http, job["response_url"])
    return code, body


async def fetch(url: str) -> tuple[bytes, Any]:
    """Download a CDN file without credentials; return (bytes, headers)."""
    async with aiohttp.ClientSession() as cdn, cdn.get(url) as resp:
        assert 200 == resp.status
        return await resp.read(), resp.headers


def open_image(data: bytes) -> Image.Image:
    """Decode an image fully."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("fmt", "size", "pil_format"),
    [
        pytest.param("png", "1024x1024", "PNG", id="png-square"),
        pytest.param("jpeg", "1536x1024", "JPEG", id="jpeg-landscape"),
        pytest.param("webp", "1024x1536", "WEBP", id="webp-portrait"),
    ],
)
async def test_output_format_and_size(
    real: tuple[Emulator, aiohttp.ClientSession], fmt: str, size: str, pil_format: str
) -> None:
    """Each output opens with Pillow at the requested size and format; sizes match the bytes."""
    emu, http = real
    code, body = await run_job(emu, http, output_format=fmt, image_size=size)
    assert 200 == code
    (meta,) = body["images"]
    data, headers = await fetch(meta["url"])
    image = open_image(data)
    width, height = (int(v) for v in size.split("x"))
    assert (pil_format, (width, height)) == (image.format, image.size)
    assert (width, height) == (meta["width"], meta["height"])
    assert meta["file_size"] == len(data) == int(headers["Content-Length"])
    assert meta["content_type"] == headers["Content-Type"] == f"image/{fmt}"
    assert meta["url"].startswith(emu.cdn_url + "/files/")
    assert 1 == emu.counters.downloads


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param((90, 40), (1536, 1024), id="landscape"),
        pytest.param((40, 90), (1024, 1536), id="portrait"),
        pytest.param((50, 45), (1024, 1024), id="squarish"),
    ],
)
async def test_auto_size_follows_the_input(
    real: tuple[Emulator, aiohttp.ClientSession],
    source: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    """``image_size: auto`` picks the size whose aspect ratio is closest to the input's."""
    emu, http = real
    _, body = await run_job(emu, http, image_urls=[data_uri(png_bytes(source))])
    assert expected == (body["images"][0]["width"], body["images"][0]["height"])


@pytest.mark.parametrize("fmt", ["png", "webp"])
async def test_transparent_background_has_alpha(
    real: tuple[Emulator, aiohttp.ClientSession], fmt: str
) -> None:
    """A transparent background gives an alpha channel: clear corners, opaque centre."""
    emu, http = real
    _, body = await run_job(emu, http, background="transparent", output_format=fmt)
    image = open_image((await fetch(body["images"][0]["url"]))[0])
    assert "A" in image.getbands()
    alpha = image.getchannel("A")
    assert (0, 255) == (alpha.getpixel((0, 0)), alpha.getpixel((512, 512)))


async def test_transparent_jpeg_is_opaque(real: tuple[Emulator, aiohttp.ClientSession]) -> None:
    """JPEG has no alpha channel, so a transparent background renders opaque."""
    emu, http = real
    _, body = await run_job(emu, http, background="transparent", output_format="jpeg")
    assert "RGB" == open_image((await fetch(body["images"][0]["url"]))[0]).mode


async def test_num_images_and_file_names(real: tuple[Emulator, aiohttp.ClientSession]) -> None:
    """``num_images`` outputs, each its own URL, named ``<request_id>_<n>.<ext>``."""
    emu, http = real
    job = await submit(http, emu, edit_input(num_images=3, output_format="jpeg"))
    rid = job["request_id"]
    await emu.wait_for_state(rid, "COMPLETED")
    _, body, _ = await get_json(http, job["response_url"])
    names = [image["file_name"] for image in body["images"]]
    assert [f"{rid}_0.jpg", f"{rid}_1.jpg", f"{rid}_2.jpg"] == names
    assert 3 == len({image["url"] for image in body["images"]})


async def test_sync_mode_returns_data_uris(real: tuple[Emulator, aiohttp.ClientSession]) -> None:
    """With ``sync_mode`` the URLs are data URIs and nothing is stored on the CDN."""
    emu, http = real
    job = await submit(http, emu, edit_input(sync_mode=True, output_format="webp"))
    await emu.wait_for_state(job["request_id"], "COMPLETED")
    _, body, _ = await get_json(http, job["response_url"])
    (meta,) = body["images"]
    header, _, payload = meta["url"].partition(",")
    assert "data:image/webp;base64" == header
    data = base64.b64decode(payload)
    assert meta["file_size"] == len(data)
    assert "WEBP" == open_image(data).format
    assert [] == emu.jobs[job["request_id"]].output_urls


async def render_png(emu: Emulator, http: aiohttp.ClientSession, prompt: str) -> Image.Image:
    """Run one png edit with ``prompt`` and return the decoded output."""
    _, body = await run_job(emu, http, prompt=prompt, image_size="1024x1024")
    return open_image((await fetch(body["images"][0]["url"]))[0]).convert("RGB")


async def test_transforms_follow_the_prompt(
    real: tuple[Emulator, aiohttp.ClientSession],
) -> None:
    """Pixel art pixelates, black and white is gray, anything else tints, deterministically."""
    emu, http = real
    pixel = await render_png(emu, http, "turn it into pixel art")
    assert 1 == len(pixel.crop((32, 32, 64, 64)).getcolors() or [])
    gray = await render_png(emu, http, "make it black and white")
    red, green, blue = (band.tobytes() for band in gray.split())
    assert red == green == blue
    tinted = await render_png(emu, http, "sunset mood")
    again = await render_png(emu, http, "sunset mood")
    assert tinted.tobytes() == again.tobytes()
    colours = tinted.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 100  # still the input's gradient, not a flat colour


async def test_uploaded_input_and_http_input(
    real: tuple[Emulator, aiohttp.ClientSession],
) -> None:
    """Inputs may be files on the emulator's CDN or http URLs it can fetch."""
    emu, http = real

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=png_bytes((40, 90)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/in.png", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        code, body = await run_job(emu, http, image_urls=[f"http://127.0.0.1:{port}/in.png"])
        assert (200, 1536) == (code, body["images"][0]["height"])
    finally:
        await runner.cleanup()

    emu.hold_downloads()  # inputs on our own CDN are read directly, never downloaded
    async with http.post(
        f"{emu.rest_url}/storage/upload/initiate", json={"file_name": "a.png"}
    ) as resp:
        urls = await resp.json()
    async with aiohttp.ClientSession() as plain:
        await plain.put(urls["upload_url"], data=png_bytes((90, 40)))
    code, body = await run_job(emu, http, image_urls=[urls["file_url"]])
    assert (200, 1536) == (code, body["images"][0]["width"])
    assert 0 == emu.counters.downloads


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(data_uri(b"this is not an image"), id="undecodable"),
        pytest.param("http://127.0.0.1:9/missing.png", id="unreachable"),
        pytest.param("data:image/png;base64,@@@", id="bad-base64"),
    ],
)
async def test_unusable_input_fails_with_422(
    real: tuple[Emulator, aiohttp.ClientSession], url: str
) -> None:
    """An input that cannot be fetched or decoded ends the job with a 422 on image_urls."""
    emu, http = real
    code, body = await run_job(emu, http, image_urls=[url])
    assert 422 == code
    (error,) = body["detail"]
    assert (["body", "image_urls", 0], "image_load_error") == (error["loc"], error["type"])


async def test_missing_cdn_file_as_input(real: tuple[Emulator, aiohttp.ClientSession]) -> None:
    """A URL on the emulator's CDN that names no file fails without a download attempt."""
    emu, http = real
    emu.hold_downloads()
    code, _ = await run_job(emu, http, image_urls=[f"{emu.cdn_url}/files/nope/x.png"])
    assert 422 == code


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_output_bytes_pads_valid_images(fmt: str) -> None:
    """``output_bytes`` grows every output to about that size; the files still decode."""
    target = 300_000
    async with Emulator(output_bytes=target, fast_images=True) as emu:
        headers = {"Authorization": f"Key {emu.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            _, body = await run_job(emu, http, output_format=fmt)
            data, _ = await fetch(body["images"][0]["url"])
    assert abs(len(data) - target) < target // 100
    assert fmt.upper() == open_image(data).format


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
async def test_no_two_outputs_have_the_same_bytes(
    emu: Emulator, http: aiohttp.ClientSession, fmt: str
) -> None:
    """As from a generative model, two jobs (or two images of one) never give the same bytes,
    even for one input and prompt: a client may know a file for a job's by its bytes. Each
    still decodes, at its declared size."""
    seen: list[bytes] = []
    for _ in range(2):
        _, body = await run_job(emu, http, output_format=fmt, num_images=2)
        for image in body["images"]:
            data, _ = await fetch(image["url"])
            assert image["file_size"] == len(data)
            assert fmt.upper() == open_image(data).format
            seen.append(data)
    assert 4 == len(set(seen))


async def test_fast_images_are_valid(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Fast placeholder images are real files of the declared size and format."""
    _, body = await run_job(emu, http, output_format="webp", image_size="1536x1024")
    image = open_image((await fetch(body["images"][0]["url"]))[0])
    assert ("WEBP", (1536, 1024)) == (image.format, image.size)


async def test_head_and_missing_files(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """HEAD gives the length without counting a download; unknown files are 404."""
    _, body = await run_job(emu, http)
    meta = body["images"][0]
    async with aiohttp.ClientSession() as cdn:
        async with cdn.head(meta["url"]) as resp:
            assert (200, meta["file_size"]) == (resp.status, int(resp.headers["Content-Length"]))
        async with cdn.get(meta["url"] + "x") as resp:
            assert 404 == resp.status
    assert 0 == emu.counters.downloads
