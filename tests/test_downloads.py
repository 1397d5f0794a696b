"""Downloads against real loopback servers: verified bytes, atomic files, retries, no key."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote_from_bytes

import anyio
import anyio.lowlevel
import attrs
import pytest
from aiohttp import web
from PIL import Image

from fal_edit_async import (
    AiohttpTransport,
    ClientConfig,
    Credentials,
    DownloadedFile,
    DownloadError,
    ImageFile,
    RetryPolicy,
)
from fal_edit_async._core import Core
from fal_edit_async._downloads import download_all, download_image, download_outcomes
from fal_edit_async._files import safe_stem, sniff_image_format
from fal_edit_async._uploads import Uploader

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
POLICY = RetryPolicy(max_attempts=3, wait=False)


def image_bytes(fmt: str, size: int = 32) -> bytes:
    """A real image in ``fmt`` (PNG, JPEG or WEBP), made with Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 90)).save(buf, fmt)
    return buf.getvalue()


def padded_png(png: bytes, extra: int) -> bytes:
    """``png`` grown by ``extra`` bytes of a private ancillary chunk, still a whole PNG."""
    payload = bytes(extra)
    chunk = len(payload).to_bytes(4, "big") + b"teSt" + payload
    chunk += zlib.crc32(b"teSt" + payload).to_bytes(4, "big")
    return png[:-12] + chunk + png[-12:]


PNG = image_bytes("PNG")
# Large enough to be written in more than one batch (the flush size is 4 MiB).
BIG = padded_png(PNG, 5 * 1024 * 1024)


class Server:
    """A loopback aiohttp server whose routes tests set; it records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: Counter[str] = Counter()
        self.auth_headers: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        if "Authorization" in request.headers:
            self.auth_headers.append(request.headers["Authorization"])
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404)
        return await handler(request)

    def image(self, path: str, data: bytes = PNG, content_type: str = "image/png") -> ImageFile:
        """Serve ``data`` at ``path``; returns the ImageFile pointing there."""
        self.routes[path] = body(data, content_type)
        return ImageFile(url=self.url + path)


def body(data: bytes, content_type: str = "image/png", *, chunked: bool = False) -> Handler:
    """A handler answering 200 with ``data`` (chunked: no Content-Length)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=data, content_type=content_type)
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 64 * 1024):
            await resp.write(data[i : i + 64 * 1024])
        await resp.write_eof()
        return resp

    return handle


def truncated(data: bytes) -> Handler:
    """A handler promising all of ``data`` but dropping the connection half way."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.abort()
        return resp

    return handle


def status(code: int, **headers: str) -> Handler:
    """A handler answering ``code`` with a small body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text="nope", headers=headers)

    return handle


def in_turn(*handlers: Handler) -> Handler:
    """A handler using ``handlers[n]`` for the n-th request (the last one from then on)."""
    calls = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return await handlers[min(calls, len(handlers)) - 1](request)

    return handle


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A running loopback server."""
    srv = Server()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def transport(server: Server) -> AsyncIterator[Core]:
    """A transport whose queue and REST origin is the test server, so a key *could* go there."""
    config = ClientConfig(
        credentials=Credentials("test-key"),
        queue_url=server.url,
        rest_url=server.url,
        retry=POLICY,
    )
    http = Core(config, AiohttpTransport())
    try:
        yield http
    finally:
        await http.aclose()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The download folder, inside tmp_path so escapes from it are visible."""
    return tmp_path / "out"


def files_in(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden ``.part`` files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_download_writes_verified_bytes(server: Server, transport: Core, dest: Path) -> None:
    """A PNG is written byte for byte under <stem>_<index>.png, with its size and hash."""
    image = server.image("/a.png", BIG)

    got = await download_image(transport, image, dest, "cat", 2, checksum=True)

    expected = DownloadedFile(
        path=dest / "cat_2.png",
        size=len(BIG),
        sha256=hashlib.sha256(BIG).hexdigest(),
        content_type="image/png",
    )
    assert expected == got
    assert BIG == got.path.read_bytes()
    assert ["cat_2.png"] == files_in(dest)
    assert 1 == transport.stats.downloads


async def test_checksum_off_and_fsync_on(server: Server, transport: Core, dest: Path) -> None:
    """checksum=False leaves sha256 unset; fsync=True writes the same bytes."""
    image = server.image("/a.png", BIG)

    got = await download_image(transport, image, dest, "x", 0, checksum=False, fsync=True)

    assert (None, BIG) == (got.sha256, got.path.read_bytes())


async def test_download_never_sends_the_key(server: Server, transport: Core, dest: Path) -> None:
    """No Authorization header goes out, even to the configured queue origin itself."""
    image = server.image("/a.png")

    await download_image(transport, image, dest, "x", 0)

    assert 1 == server.hits["/a.png"]
    assert [] == server.auth_headers


async def test_redirect_to_another_origin_carries_no_key(
    server: Server, transport: Core, dest: Path
) -> None:
    """A redirect to another origin is followed, and neither hop carries a key."""
    cdn = Server()
    await cdn.start()
    try:
        cdn.image("/file.png")
        server.routes["/r"] = status(302, Location=cdn.url + "/file.png")

        got = await download_image(transport, ImageFile(url=server.url + "/r"), dest, "x", 0)
    finally:
        await cdn.stop()

    assert PNG == got.path.read_bytes()
    assert (1, 1) == (server.hits["/r"], cdn.hits["/file.png"])
    assert [] == server.auth_headers + cdn.auth_headers


@pytest.mark.parametrize(
    ("fmt", "name", "content_type"),
    [
        pytest.param("PNG", "x_0.png", "image/png", id="png"),
        pytest.param("JPEG", "x_0.jpg", "image/jpeg", id="jpeg"),
        pytest.param("WEBP", "x_0.webp", "image/webp", id="webp"),
    ],
)
async def test_extension_comes_from_the_bytes(
    server: Server, transport: Core, dest: Path, fmt: str, name: str, content_type: str
) -> None:
    """The extension and content type follow the real format, not the server's label."""
    data = image_bytes(fmt)
    image = server.image("/img", data, content_type="image/png")  # mislabelled on purpose

    got = await download_image(transport, image, dest, "x", 0)

    assert (dest / name, content_type) == (got.path, got.content_type)
    assert data == got.path.read_bytes()


async def test_hostile_names_stay_in_the_folder(
    server: Server, transport: Core, dest: Path, tmp_path: Path
) -> None:
    """Neither the server's file_name nor an odd stem can place a file outside the folder."""
    server.image("/a.png")
    image = ImageFile(url=server.url + "/a.png", file_name="../../evil\x00.sh")

    got = await download_image(transport, image, dest, "../../\x00/etc/passwd", 0)

    assert dest == got.path.parent
    assert ["out"] == files_in(tmp_path)
    assert [got.path.name] == files_in(dest)
    assert got.path.name.startswith("_.._")  # separators and NUL replaced, leading dots gone


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        pytest.param("photo-1.v2", "photo-1.v2", id="kept"),
        pytest.param("a b/c\\d", "a b_c_d", id="separators"),
        pytest.param("..", "image", id="dots-only"),
        pytest.param(".hidden", "hidden", id="leading-dot"),
        pytest.param("", "image", id="empty"),
        pytest.param("nul\x00byte", "nul_byte", id="nul"),
        pytest.param("é", "é", id="non-ascii"),
        pytest.param("写真1", "写真1", id="cjk"),
        pytest.param("a?b", "a_b", id="windows-reserved-character"),
        pytest.param("CON", "_CON", id="reserved-device-name"),
        pytest.param("name. ", "name", id="trailing-dot-and-space"),
        pytest.param("x" * 300, "x" * 100, id="capped"),
    ],
)
def test_safe_stem(stem: str, expected: str) -> None:
    """safe_stem keeps readable names, drops what could leave the folder, caps length."""
    assert expected == safe_stem(stem)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        pytest.param(image_bytes("PNG")[:12], "png", id="png"),
        pytest.param(image_bytes("JPEG")[:12], "jpeg", id="jpeg"),
        pytest.param(image_bytes("WEBP")[:12], "webp", id="webp"),
        pytest.param(image_bytes("GIF")[:12], "gif", id="gif"),
        pytest.param(b"RIFF\x00\x00\x00\x00WAVE", None, id="riff-not-webp"),
        pytest.param(b"<html>", None, id="html"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_sniff_image_format(head: bytes, expected: str | None) -> None:
    """The format is read from the magic bytes."""
    assert expected == sniff_image_format(head)


async def test_truncated_body_is_retried(server: Server, transport: Core, dest: Path) -> None:
    """A body cut short of its Content-Length is retried, counted, and leaves no temp file."""
    server.routes["/a.png"] = in_turn(truncated(BIG), body(BIG))

    got = await download_image(transport, ImageFile(url=server.url + "/a.png"), dest, "x", 0)

    assert BIG == got.path.read_bytes()
    assert 2 == server.hits["/a.png"]
    assert 1 == transport.stats.snapshot().retries.download
    assert ["x_0.png"] == files_in(dest)


def gzipped(data: bytes, *, cut: bool = False) -> Handler:
    """A handler compressing ``data`` despite Accept-Encoding: identity (its Content-Length
    is the encoded one), and with ``cut`` dropping the connection half way."""

    async def handle(request: web.Request) -> web.StreamResponse:
        encoded = gzip.compress(data)
        headers = {"Content-Type": "image/png", "Content-Encoding": "gzip"}
        if not cut:
            return web.Response(body=encoded, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(encoded)
        await resp.prepare(request)
        await resp.write(encoded[: len(encoded) // 2])
        assert request.transport is not None
        request.transport.abort()
        return resp

    return handle


async def test_a_compressed_download_is_written_decoded(
    server: Server, transport: Core, dest: Path
) -> None:
    """A CDN that gzips anyway: the file is the decoded image, on the first try; the encoded
    Content-Length is not taken for the decoded body's."""
    server.routes["/a.png"] = gzipped(BIG)
    image = ImageFile(url=server.url + "/a.png", file_size=len(BIG))

    got = await download_image(transport, image, dest, "x", 0)

    assert (BIG, 1) == (got.path.read_bytes(), server.hits["/a.png"])


async def test_a_compressed_download_cut_short_is_retried(
    server: Server, transport: Core, dest: Path
) -> None:
    """A compressed body cut short of its (encoded) Content-Length is still a truncation."""
    server.routes["/a.png"] = in_turn(gzipped(BIG, cut=True), gzipped(BIG))

    got = await download_image(transport, ImageFile(url=server.url + "/a.png"), dest, "x", 0)

    assert BIG == got.path.read_bytes()
    assert 1 == transport.stats.snapshot().retries.download


async def test_always_truncated_gives_up_cleanly(
    server: Server, transport: Core, dest: Path
) -> None:
    """A body that is always cut short fails after max_attempts and leaves nothing behind."""
    server.routes["/a.png"] = truncated(BIG)

    with pytest.raises(DownloadError, match="gave up after 3 tries") as info:
        await download_image(transport, ImageFile(url=server.url + "/a.png"), dest, "x", 0)

    assert server.url + "/a.png" == info.value.url
    assert 3 == server.hits["/a.png"]
    assert 2 == transport.stats.snapshot().retries.download
    assert [] == files_in(dest)


@pytest.mark.parametrize("code", [500, 503, 429, 408])
async def test_transient_statuses_are_retried(
    server: Server, transport: Core, dest: Path, code: int
) -> None:
    """408, 429 and 5xx are retried (Retry-After is read, and waits are off here)."""
    server.routes["/a.png"] = in_turn(status(code, **{"Retry-After": "1"}), body(PNG))

    got = await download_image(transport, ImageFile(url=server.url + "/a.png"), dest, "x", 0)

    assert PNG == got.path.read_bytes()
    assert (2, 1) == (server.hits["/a.png"], transport.stats.snapshot().retries.download)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        pytest.param(status(404), "HTTP 404", id="404"),
        pytest.param(status(403), "HTTP 403", id="403"),
        pytest.param(body(PNG, "text/html"), "Content-Type 'text/html'", id="html"),
        pytest.param(body(b"\x00" * 100), "not a PNG, JPEG or WebP", id="not-an-image"),
        pytest.param(body(image_bytes("GIF"), "image/gif"), "image/gif", id="gif"),
    ],
)
async def test_permanent_failures_are_not_retried(
    server: Server, transport: Core, dest: Path, handler: Handler, message: str
) -> None:
    """Refusals and wrong content fail at once with the reason, leaving nothing behind."""
    server.routes["/a.png"] = handler

    with pytest.raises(DownloadError, match=message):
        await download_image(transport, ImageFile(url=server.url + "/a.png"), dest, "x", 0)

    assert 1 == server.hits["/a.png"]
    assert 0 == transport.stats.snapshot().retries.download
    assert [] == files_in(dest)


async def test_file_size_mismatch_is_retried_then_fails(
    server: Server, transport: Core, dest: Path
) -> None:
    """A body whose length differs from fal's file_size is retried, then refused."""
    server.image("/a.png")
    image = ImageFile(url=server.url + "/a.png", file_size=len(PNG) + 1)

    with pytest.raises(DownloadError, match="expected"):
        await download_image(transport, image, dest, "x", 0)

    assert 3 == server.hits["/a.png"]
    assert [] == files_in(dest)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_max_bytes_aborts_without_retry(
    server: Server, transport: Core, dest: Path, chunked: bool
) -> None:
    """A body over max_bytes is refused once, whether or not its length was announced."""
    server.routes["/a.png"] = body(BIG, chunked=chunked)

    with pytest.raises(DownloadError, match="max_bytes"):
        await download_image(
            transport,
            ImageFile(url=server.url + "/a.png"),
            dest,
            "x",
            0,
            max_bytes=1024 * 1024,
        )

    assert 1 == server.hits["/a.png"]
    assert [] == files_in(dest)


async def test_chunked_body_without_length(server: Server, transport: Core, dest: Path) -> None:
    """A chunked body (no Content-Length) is written whole."""
    server.routes["/a.png"] = body(BIG, chunked=True)

    got = await download_image(transport, ImageFile(url=server.url + "/a.png"), dest, "x", 0)

    assert BIG == got.path.read_bytes()


async def test_rerun_replaces_the_same_file(server: Server, transport: Core, dest: Path) -> None:
    """Downloading to the same name again replaces the file: re-runs are idempotent."""
    image = server.image("/a.png")
    first = await download_image(transport, image, dest, "x", 0)
    server.image("/a.png", BIG)

    second = await download_image(transport, image, dest, "x", 0)

    assert first.path == second.path
    assert BIG == second.path.read_bytes()
    assert ["x_0.png"] == files_in(dest)


async def test_disk_error_is_a_download_error(
    server: Server, transport: Core, tmp_path: Path
) -> None:
    """A folder that cannot be created fails the image once, without retries."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    image = server.image("/a.png")

    with pytest.raises(DownloadError, match="could not write the file"):
        await download_image(transport, image, blocker / "out", "x", 0)

    assert 1 == server.hits["/a.png"]


async def test_unsupported_scheme_is_refused(transport: Core, dest: Path) -> None:
    """Only http(s) URLs and data: URIs are downloaded; a file: URL is refused."""
    with pytest.raises(DownloadError, match="not an http"):
        await download_image(transport, ImageFile(url="file:///etc/passwd"), dest, "x", 0)

    assert [] == files_in(dest)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("data:image/png;base64," + base64.b64encode(PNG).decode(), id="base64"),
        pytest.param(
            "data:image/png;base64," + base64.encodebytes(PNG).decode(), id="base64-lines"
        ),
        pytest.param("data:image/png," + quote_from_bytes(PNG), id="percent-encoded"),
    ],
)
async def test_data_uri_is_decoded_to_a_file(transport: Core, dest: Path, uri: str) -> None:
    """A sync-mode data: URI is decoded and written like a download."""
    got = await download_image(transport, ImageFile(url=uri), dest, "s", 1, checksum=True)

    assert (dest / "s_1.png", PNG) == (got.path, got.path.read_bytes())
    assert hashlib.sha256(PNG).hexdigest() == got.sha256
    assert ["s_1.png"] == files_in(dest)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        pytest.param("data:image/png;base64,@@@@", "invalid base64", id="bad-base64"),
        pytest.param("data:text/plain;base64,aGk=", "not an image", id="text"),
        pytest.param("data:image/png;base64", "no comma", id="no-comma"),
        pytest.param("data:image/png;base64,aGVsbG8gd29ybGQh", "not a PNG", id="not-png"),
    ],
)
async def test_bad_data_uri_is_refused(transport: Core, dest: Path, uri: str, message: str) -> None:
    """A data: URI that is malformed or not an image fails and writes nothing."""
    with pytest.raises(DownloadError, match=message):
        await download_image(transport, ImageFile(url=uri), dest, "s", 0)

    assert [] == files_in(dest)


async def test_data_uri_over_max_bytes_is_refused(transport: Core, dest: Path) -> None:
    """An oversized data: URI is refused before it is decoded."""
    uri = "data:image/png;base64," + base64.b64encode(BIG).decode()

    with pytest.raises(DownloadError, match="max_bytes"):
        await download_image(transport, ImageFile(url=uri), dest, "s", 0, max_bytes=1024)


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until ``predicate()`` holds; fails the test after 5 s."""
    with anyio.fail_after(5):
        while not predicate():
            await anyio.lowlevel.checkpoint()


async def test_cancelled_download_leaves_no_file(
    server: Server, transport: Core, dest: Path
) -> None:
    """Cancelling a download mid-body removes its temp file; nothing is left in the folder."""
    release = anyio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = len(BIG) * 2
        await resp.prepare(request)
        await resp.write(BIG)  # more than one write batch: the temp file exists
        await release.wait()
        return resp

    server.routes["/a.png"] = stall
    image = ImageFile(url=server.url + "/a.png")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: download_image(transport, image, dest, "x", 0))
            await wait_for(lambda: any(n.endswith(".part") for n in files_in(dest)))
            tg.cancel_scope.cancel()
    finally:
        release.set()

    assert [] == files_in(dest)


async def test_download_all_collects_failures(server: Server, transport: Core, dest: Path) -> None:
    """One failed image never stops the others; failures are raised together at the end."""
    images = [server.image("/a.png"), ImageFile(url=server.url + "/gone"), server.image("/b.png")]

    with pytest.raises(ExceptionGroup) as info:
        await download_all(transport, images, dest, "job")

    assert 1 == len(info.value.exceptions)
    assert isinstance(info.value.exceptions[0], DownloadError)
    assert "image 1 of 3" in info.value.exceptions[0].__notes__[0]
    assert ["job_0.png", "job_2.png"] == files_in(dest)


async def test_download_outcomes_hold_each_file_or_error(
    server: Server, transport: Core, dest: Path
) -> None:
    """For a batch, each slot holds its file or its error, in order."""
    images = [server.image("/a.png"), ImageFile(url=server.url + "/gone")]

    got = await download_outcomes(transport, images, dest, "job", limiter=anyio.CapacityLimiter(2))

    assert isinstance(got[0], DownloadedFile)
    assert dest / "job_0.png" == got[0].path
    assert isinstance(got[1], DownloadError)


async def test_download_all_respects_the_limit(server: Server, transport: Core, dest: Path) -> None:
    """No more than ``limit`` downloads run at once."""
    release = anyio.Event()
    running = peak = 0

    async def gated(request: web.Request) -> web.StreamResponse:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return web.Response(body=PNG, content_type="image/png")

    for n in range(5):
        server.routes[f"/{n}.png"] = gated
    images = [ImageFile(url=f"{server.url}/{n}.png") for n in range(5)]
    results: list[DownloadedFile] = []

    async def run() -> None:
        results.extend(await download_all(transport, images, dest, "j", limit=2))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await wait_for(lambda: running == 2)
            await anyio.wait_all_tasks_blocked()
            assert 2 == sum(server.hits.values())
            release.set()
    finally:
        release.set()

    assert 2 == peak
    assert [f"j_{n}.png" for n in range(5)] == [r.path.name for r in results]


async def test_emulator_round_trip(dest: Path) -> None:
    """A file uploaded to the emulator's CDN downloads back byte for byte, without the key."""
    emulator = pytest.importorskip("fal_edit_async.emulator")

    async with emulator.Emulator() as emu:
        config = ClientConfig(
            credentials=Credentials(emu.api_key),
            queue_url=emu.queue_url,
            rest_url=emu.rest_url,
            retry=POLICY,
        )
        http = Core(config, AiohttpTransport())
        try:
            url = await Uploader(http, inline_threshold=0).resolve(BIG, field="f")
            emu.schedule_fault("download", "truncated_download")
            got = await download_image(http, ImageFile(url=url), dest, "e", 0)
        finally:
            await http.aclose()
        assert BIG == got.path.read_bytes()
        assert 1 == http.stats.snapshot().retries.download
        assert (1, 1, 0) == (
            emu.counters.upload_initiates,
            emu.counters.downloads,
            emu.counters.cdn_auth_requests,
        )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(PNG[:8] + b"garbage" * 40, id="png-signature-then-garbage"),
        pytest.param(PNG + b"trailing", id="bytes-after-iend"),
        pytest.param(PNG[:-20] + PNG[-12:], id="a-chunk-cut-out"),
    ],
)
async def test_a_file_that_is_not_a_whole_image_is_refused(
    server: Server, transport: Core, dest: Path, data: bytes
) -> None:
    """The magic bytes are not enough: PNG chunks and CRCs through IEND are checked, every try,
    and nothing is left on disk."""
    with pytest.raises(DownloadError, match="not a whole image"):
        await download_image(transport, server.image("/a.png", data), dest, "x", 0)
    assert 3 == server.hits["/a.png"]  # retried: a CDN may have served it broken once
    assert [] == files_in(dest)


async def test_an_image_of_another_size_than_fal_reported_is_refused(
    server: Server, transport: Core, dest: Path
) -> None:
    """fal said 1024x1024; the bytes are a 32x32 image: not this job's output."""
    image = attrs.evolve(server.image("/a.png"), width=1024, height=1024)
    with pytest.raises(DownloadError, match="width is 32, but fal reported 1024"):
        await download_image(transport, image, dest, "x", 0)
    assert [] == files_in(dest)
