"""Uploads against real loopback servers: inline or upload, dedup, checks first, no key on PUT."""

from __future__ import annotations

import base64
import functools
import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from PIL import Image

from fal_edit_async import (
    DEFAULT_LIMITS,
    AiohttpTransport,
    APIError,
    AuthError,
    ClientConfig,
    ClientStatistics,
    Credentials,
    EditImageInput,
    InputError,
    ProtocolError,
    RetryPolicy,
)
from fal_edit_async._core import Core
from fal_edit_async._uploads import Uploader

DEFAULT_INLINE_THRESHOLD = DEFAULT_LIMITS.inline_bytes

POLICY = RetryPolicy(max_attempts=3, wait=False)


def image_bytes(fmt: str, size: int = 16) -> bytes:
    """A real image in ``fmt``, made with Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 120, 200)).save(buf, fmt)
    return buf.getvalue()


SMALL = image_bytes("PNG")
# A valid PNG header followed by padding: above the inline threshold, so it is uploaded.
LARGE = SMALL + os.urandom(DEFAULT_INLINE_THRESHOLD + 3 * 1024 * 1024)


class Storage:
    """fal's REST initiate endpoint plus a presigned-PUT store, on one or two origins.

    ``same_origin`` puts the PUT URLs on the REST origin itself, where the transport would
    add the key to anything sent with ``request()``.
    """

    def __init__(self, *, same_origin: bool) -> None:
        self.same_origin = same_origin
        self.initiates: list[dict[str, Any]] = []
        self.puts: list[dict[str, Any]] = []
        self.put_statuses: list[int] = []  # statuses for the next PUTs, then 200
        self.initiate_answer: Any = None  # overrides the initiate JSON when set
        self.gate: anyio.Event | None = None  # when set, PUTs wait for it
        self.initiate_gate: anyio.Event | None = None  # when set, initiates wait for it
        self.initiating = 0
        self.running = self.peak = 0
        self.rest_url = self.cdn_url = ""
        self._runners: list[web.AppRunner] = []

    @property
    def requests(self) -> int:
        """Every request either origin received."""
        return len(self.initiates) + len(self.puts)

    async def start(self) -> None:
        rest = web.Application(client_max_size=64 * 1024 * 1024)
        rest.router.add_post("/storage/upload/initiate", self._initiate)
        rest.router.add_put("/put/{n}", self._put)
        self.rest_url = await self._serve(rest)
        if self.same_origin:
            self.cdn_url = self.rest_url
        else:
            cdn = web.Application(client_max_size=64 * 1024 * 1024)
            cdn.router.add_put("/put/{n}", self._put)
            self.cdn_url = await self._serve(cdn)

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        self._runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        for gate in (self.gate, self.initiate_gate):
            if gate is not None:
                gate.set()
        for runner in self._runners:
            await runner.cleanup()

    async def _initiate(self, request: web.Request) -> web.Response:
        if self.initiate_gate is not None:
            self.initiating += 1
            await self.initiate_gate.wait()
        n = len(self.initiates)
        self.initiates.append(
            {
                "authorization": request.headers.get("Authorization"),
                "query": dict(request.query),
                "json": await request.json(),
            }
        )
        answer = self.initiate_answer or {
            "upload_url": f"{self.cdn_url}/put/{n}?sig=abc",
            "file_url": f"https://cdn.example/files/{n}.png",
        }
        return web.json_response(answer)

    async def _put(self, request: web.Request) -> web.Response:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            data = await request.read()
        finally:
            self.running -= 1
        self.puts.append(
            {
                "path": request.path_qs,
                "authorization": request.headers.get("Authorization"),
                "content_type": request.headers.get("Content-Type"),
                "content_length": request.headers.get("Content-Length"),
                "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
                "data": data,
            }
        )
        code = self.put_statuses.pop(0) if self.put_statuses else 200
        return web.Response(status=code, text="{}")


async def start_storage(same_origin: bool) -> Storage:
    """A started storage server."""
    storage = Storage(same_origin=same_origin)
    await storage.start()
    return storage


@pytest.fixture(params=[False, True], ids=["cdn-origin", "rest-origin"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    """The storage servers, with PUT URLs on another origin and on the REST origin."""
    srv = await start_storage(bool(request.param))
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def transport(storage: Storage) -> AsyncIterator[Core]:
    """A core whose queue and REST origin is the storage server."""
    http = Core(config_for(storage), AiohttpTransport())
    try:
        yield http
    finally:
        await http.aclose()


def config_for(storage: Storage) -> ClientConfig:
    """A client configuration pointing at the storage server with the key ``test-key``."""
    return ClientConfig(
        credentials=Credentials("test-key"),
        queue_url=storage.rest_url,
        rest_url=storage.rest_url,
        retry=POLICY,
    )


@pytest.fixture
def uploader(storage: Storage, transport: Core) -> Uploader:
    """An uploader with the default threshold and limits."""
    return Uploader(transport)


def uploader_stats(uploader: Uploader) -> ClientStatistics:
    """What the uploader's core counted."""
    return uploader._core.stats.snapshot()


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """The media type and bytes of a base64 data: URI."""
    header, _, payload = uri.partition(",")
    assert header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(payload)


async def test_url_strings_pass_through(storage: Storage, uploader: Uploader) -> None:
    """A URL or data: URI string is returned unchanged, with no request."""
    for url in ("https://example.com/a.png", "data:image/png;base64,AAAA"):
        assert url == await uploader.resolve(url, field="image_urls[0]")

    assert 0 == storage.requests


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")],
)
async def test_small_bytes_become_a_data_uri(
    storage: Storage, uploader: Uploader, fmt: str, media_type: str
) -> None:
    """Small image bytes are inlined as a data: URI of their real type, with no request."""
    data = image_bytes(fmt)

    uri = await uploader.resolve(data, field="image_urls[0]")

    assert (media_type, data) == decode_data_uri(uri)
    assert 0 == storage.requests
    assert 1 == uploader_stats(uploader).inlined


async def test_small_file_becomes_a_data_uri(
    storage: Storage, uploader: Uploader, tmp_path: Path
) -> None:
    """A small image file is read off the loop and inlined, with no request."""
    path = tmp_path / "in.png"
    path.write_bytes(SMALL)

    uri = await uploader.resolve(path, field="image_urls[0]")

    assert ("image/png", SMALL) == decode_data_uri(uri)
    assert 0 == storage.requests


async def test_large_bytes_are_uploaded(storage: Storage, uploader: Uploader) -> None:
    """Large bytes go through initiate (with the key) and a PUT (without it)."""
    url = await uploader.resolve(LARGE, field="image_urls[0]")

    assert "https://cdn.example/files/0.png" == url
    [initiate] = storage.initiates
    assert "Key test-key" == initiate["authorization"]
    assert {"storage_type": "fal-cdn-v3"} == initiate["query"]
    assert "image/png" == initiate["json"]["content_type"]
    assert initiate["json"]["file_name"].endswith(".png")
    [put] = storage.puts
    assert (None, "image/png", LARGE) == (put["authorization"], put["content_type"], put["data"])
    assert "/put/0?sig=abc" == put["path"]
    assert (1, 0) == (uploader_stats(uploader).uploads, uploader_stats(uploader).retries.total)


async def test_large_file_is_streamed_with_a_length(
    storage: Storage, uploader: Uploader, tmp_path: Path
) -> None:
    """A large file is uploaded from disk with a Content-Length, not chunked, and no key."""
    path = tmp_path / "My Photo.png"
    path.write_bytes(LARGE)

    url = await uploader.resolve(path, field="image_urls[0]")

    assert url.startswith("https://cdn.example/files/")
    assert "My_Photo.png" == storage.initiates[0]["json"]["file_name"]
    [put] = storage.puts
    assert (None, str(len(LARGE)), False) == (
        put["authorization"],
        put["content_length"],
        put["chunked"],
    )
    assert LARGE == put["data"]


async def test_same_content_is_uploaded_once(storage: Storage, uploader: Uploader) -> None:
    """The same content resolved twice at once, then again, is uploaded exactly once."""
    storage.gate = anyio.Event()
    urls: list[str] = []

    async def resolve() -> None:
        urls.append(await uploader.resolve(LARGE, field="image_urls[0]"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(resolve)
        tg.start_soon(resolve)
        await wait_for(lambda: storage.running == 1)
        await anyio.wait_all_tasks_blocked()
        storage.gate.set()
    urls.append(await uploader.resolve(bytes(bytearray(LARGE)), field="image_urls[1]"))

    assert 1 == len(set(urls))
    assert (1, 1) == (len(storage.initiates), len(storage.puts))
    assert 2 == uploader_stats(uploader).upload_dedup


async def test_uploads_respect_the_limit(storage: Storage, transport: Core) -> None:
    """No more than ``limit`` uploads run at once."""
    uploader = Uploader(transport, limit=2)
    storage.gate = anyio.Event()

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(functools.partial(uploader.resolve, LARGE + bytes([n]), field="f"))
        await wait_for(lambda: storage.running == 2)
        await anyio.wait_all_tasks_blocked()
        assert 2 == len(storage.initiates)
        storage.gate.set()

    assert (2, 4) == (storage.peak, len(storage.puts))


async def test_put_is_retried_on_503(storage: Storage, uploader: Uploader) -> None:
    """A transient PUT failure is retried and counted."""
    storage.put_statuses = [503]

    await uploader.resolve(LARGE, field="image_urls[0]")

    assert (1, 2) == (len(storage.initiates), len(storage.puts))
    assert 1 == uploader_stats(uploader).retries.upload


async def test_put_refused_is_not_retried(storage: Storage, uploader: Uploader) -> None:
    """A 403 from the storage host is an upload failure, not an auth error, and not retried."""
    storage.put_statuses = [403]

    with pytest.raises(APIError, match="storage host refused") as info:
        await uploader.resolve(LARGE, field="image_urls[0]")

    assert not isinstance(info.value, AuthError)
    assert (403, 1) == (info.value.status, len(storage.puts))


async def test_failed_upload_is_not_cached(storage: Storage, uploader: Uploader) -> None:
    """After a failed upload the same content is uploaded again, not served from the cache."""
    storage.put_statuses = [403]
    with pytest.raises(APIError):
        await uploader.resolve(LARGE, field="f")

    await uploader.resolve(LARGE, field="f")

    assert 2 == len(storage.initiates)


@pytest.mark.parametrize(
    "new_content",
    [pytest.param(LARGE[:1000], id="shrunk"), pytest.param(LARGE[:-1] + b"!", id="edited")],
)
async def test_file_changed_while_uploading(
    storage: Storage, uploader: Uploader, tmp_path: Path, new_content: bytes
) -> None:
    """A file that changes between its check and its upload fails with InputError."""
    path = tmp_path / "in.png"
    path.write_bytes(LARGE)

    async def edit_once_initiated() -> None:
        await wait_for(lambda: storage.initiating == 1)
        path.write_bytes(new_content)
        gate.set()

    gate = storage.initiate_gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(edit_once_initiated)
        with pytest.raises(InputError, match="does not change while uploading"):
            await uploader.resolve(path, field="f")

    assert 0 == uploader_stats(uploader).uploads


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"file_url": "https://x/y.png"}, id="no-upload-url"),
        pytest.param({"upload_url": "https://x/u", "file_url": "data:,x"}, id="data-file-url"),
        pytest.param(["not", "a", "dict"], id="list"),
    ],
)
async def test_bad_initiate_answer(storage: Storage, uploader: Uploader, answer: Any) -> None:
    """An initiate answer without usable URLs is a ProtocolError, and nothing is PUT."""
    storage.initiate_answer = answer

    with pytest.raises(ProtocolError, match="upload initiate"):
        await uploader.resolve(LARGE, field="f")

    assert [] == storage.puts


def make_missing(tmp_path: Path) -> Path:
    """A path that does not exist."""
    return tmp_path / "missing.png"


def make_empty(tmp_path: Path) -> Path:
    """An empty file."""
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    return path


def make_directory(tmp_path: Path) -> Path:
    """A directory."""
    path = tmp_path / "dir.png"
    path.mkdir()
    return path


def make_text(tmp_path: Path) -> Path:
    """A text file with an image's name."""
    path = tmp_path / "text.png"
    path.write_text("hello, not an image")
    return path


def make_large_text(tmp_path: Path) -> Path:
    """A large file that is not an image (checked before it would be uploaded)."""
    path = tmp_path / "big.png"
    path.write_bytes(b"<html>" + bytes(DEFAULT_INLINE_THRESHOLD * 2))
    return path


def make_gif(tmp_path: Path) -> Path:
    """A GIF, which the model does not take."""
    path = tmp_path / "anim.gif"
    path.write_bytes(image_bytes("GIF"))
    return path


def make_too_big(tmp_path: Path) -> Path:
    """An image over the uploader's max_bytes (set to 1 MiB in the test)."""
    path = tmp_path / "huge.png"
    path.write_bytes(LARGE)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(make_missing, "no such file", id="missing"),
        pytest.param(make_empty, "empty", id="empty"),
        pytest.param(make_directory, "directory", id="directory"),
        pytest.param(make_text, "not an image", id="not-an-image"),
        pytest.param(make_large_text, "not an image", id="large-not-an-image"),
        pytest.param(make_gif, "is a GIF", id="gif"),
        pytest.param(make_too_big, "at most 1048576 bytes", id="too-big"),
    ],
)
async def test_bad_files_fail_before_any_request(
    storage: Storage,
    transport: Core,
    tmp_path: Path,
    make: Callable[[Path], Path],
    message: str,
) -> None:
    """Unreadable, empty, non-image and oversized files raise InputError naming the field."""
    uploader = Uploader(transport, max_bytes=1024 * 1024)
    path = make(tmp_path)

    with pytest.raises(InputError, match=message) as info:
        await uploader.resolve(path, field="image_urls[3]")

    assert "image_urls[3]" == info.value.field
    assert str(info.value).startswith("image_urls[3]: ")
    assert 0 == storage.requests


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_unreadable_file(storage: Storage, uploader: Uploader, tmp_path: Path) -> None:
    """A file without read permission raises InputError saying so."""
    path = tmp_path / "locked.png"
    path.write_bytes(SMALL)
    path.chmod(0)

    with pytest.raises(InputError, match="permission denied"):
        await uploader.resolve(path, field="f")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "non-empty", id="empty"),
        pytest.param(b"GIF89a" + bytes(10), "GIF", id="gif"),
        pytest.param(b"plain text", "not an image", id="text"),
        pytest.param(SMALL + bytes(2 * 1024 * 1024), "at most", id="too-big"),
    ],
)
async def test_bad_bytes_fail_before_any_request(
    storage: Storage, transport: Core, data: bytes, message: str
) -> None:
    """Bytes that are empty, not an image or too large raise InputError."""
    uploader = Uploader(transport, max_bytes=1024 * 1024)

    with pytest.raises(InputError, match=message):
        await uploader.resolve(data, field="image_urls[0]")

    assert 0 == storage.requests


async def test_resolve_input_resolves_every_image(
    storage: Storage, uploader: Uploader, tmp_path: Path
) -> None:
    """Every image of an input becomes a string: URLs kept, small inlined, large uploaded."""
    path = tmp_path / "large.png"
    path.write_bytes(LARGE)
    given = EditImageInput(
        prompt="make it blue", image_urls=["https://example.com/a.png", SMALL, path]
    )

    got = await uploader.resolve_input(given)

    assert got.is_resolved
    url, inline, uploaded = got.image_urls
    assert "https://example.com/a.png" == url
    assert isinstance(inline, str) and inline.startswith("data:image/png;base64,")
    assert "https://cdn.example/files/0.png" == uploaded
    assert (given.prompt, 1) == (got.prompt, len(storage.puts))


async def test_resolve_input_checks_all_before_uploading(
    storage: Storage, uploader: Uploader, tmp_path: Path
) -> None:
    """A bad second image stops the input before the good first one is uploaded."""
    good = tmp_path / "large.png"
    good.write_bytes(LARGE)
    given = EditImageInput(prompt="p", image_urls=[good, tmp_path / "nope.png"])

    with pytest.raises(InputError) as info:
        await uploader.resolve_input(given)

    assert "image_urls[1]" == info.value.field
    assert 0 == storage.requests


async def test_resolve_input_is_a_no_op_when_resolved(uploader: Uploader) -> None:
    """An input with only URLs is returned as it is."""
    given = EditImageInput(prompt="p", image_urls=["https://example.com/a.png"])

    assert given is await uploader.resolve_input(given)


async def test_resolve_input_raises_a_plain_error(storage: Storage, uploader: Uploader) -> None:
    """An upload failure in resolve_input is the error itself, not an exception group."""
    storage.put_statuses = [403]
    given = EditImageInput(prompt="p", image_urls=[LARGE, SMALL])

    with pytest.raises(APIError):
        await uploader.resolve_input(given)


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until ``predicate()`` holds; fails the test after 5 s."""
    with anyio.fail_after(5):
        while not predicate():
            await anyio.lowlevel.checkpoint()


async def test_emulator_upload(tmp_path: Path) -> None:
    """The emulator's storage takes an upload once, serves it back, and never sees the key."""
    emulator = pytest.importorskip("fal_edit_async.emulator")
    path = tmp_path / "in.png"
    path.write_bytes(LARGE)

    async with emulator.Emulator() as emu:
        config = ClientConfig(
            credentials=Credentials(emu.api_key),
            queue_url=emu.queue_url,
            rest_url=emu.rest_url,
            retry=POLICY,
        )
        http = Core(config, AiohttpTransport())
        try:
            uploader = Uploader(http)
            first = await uploader.resolve(path, field="f")
            second = await uploader.resolve(LARGE, field="f")
            fetched = await http.request("GET", first)
        finally:
            await http.aclose()
        assert first == second
        assert first.startswith(emu.cdn_url)
        assert LARGE == fetched.body
        counters = emu.counters
        assert (1, 1, 0) == (
            counters.upload_initiates,
            counters.upload_puts,
            counters.cdn_auth_requests,
        )


async def test_uploader_arguments_are_checked() -> None:
    """Impossible uploader settings are refused when it is built."""
    config = ClientConfig(credentials=Credentials("k"))
    http = Core(config, AiohttpTransport())
    with pytest.raises(ValueError, match="limit or limiter"):
        Uploader(http, limit=2, limiter=anyio.CapacityLimiter(2))
    with pytest.raises(ValueError, match="max_bytes"):
        Uploader(http, max_bytes=0)
    with pytest.raises(ValueError, match="inline_threshold"):
        Uploader(http, inline_threshold=-1)
