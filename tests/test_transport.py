"""The HTTP seam: the key policy holds for any transport, and aiohttp's errors are mapped only
inside the transport's own reads.

The core's decisions (which requests carry ``Authorization``, scrubbing the key from answers)
are proven in memory through :class:`MockTransport`; the error mapping is proven against a real
loopback server, since it is aiohttp's behaviour being translated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web

from fal_edit_async import (
    AiohttpTransport,
    APIError,
    AsyncClient,
    EditImageInput,
    MockTransport,
    Request,
    Response,
    RetryPolicy,
    TransportError,
)

KEY = "k3y-5ecret-for-tests"
QUEUE = "https://queue.example"
REST = "https://rest.example"
INPUT = EditImageInput(prompt="p", image_urls=["https://cdn.example/in.png"])
ANSWERS = {
    "request_id": "r1",
    "status_url": f"{QUEUE}/fal-ai/gpt-image-1/requests/r1/status",
    "response_url": f"{QUEUE}/fal-ai/gpt-image-1/requests/r1",
    "cancel_url": f"{QUEUE}/fal-ai/gpt-image-1/requests/r1/cancel",
}


class Recorder:
    """A MockTransport handler that records requests and answers from a table by URL prefix."""

    def __init__(self, answers: dict[str, Response]) -> None:
        self.answers = answers
        self.seen: list[Request] = []

    def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        for prefix, answer in self.answers.items():
            if request.url.startswith(prefix):
                return answer
        return Response(status=404, json={"detail": "no route"})

    def authorized(self) -> list[str]:
        """The URLs of requests that carried an Authorization header."""
        return [r.url for r in self.seen if "Authorization" in r.headers]


def client_with(handler: Recorder, **kw: object) -> AsyncClient:
    """A client on ``handler`` with the test key and retries that never sleep."""
    options: dict[str, object] = {
        "api_key": KEY,
        "queue_url": QUEUE,
        "rest_url": REST,
        "retry": RetryPolicy(wait=False, max_attempts=2),
    }
    options.update(kw)
    return AsyncClient(transport=MockTransport(handler), **options)  # type: ignore[arg-type]


async def test_key_goes_to_the_queue_and_never_elsewhere() -> None:
    """Submit and status carry the key; a receipt naming another host is not trusted with it."""
    foreign = {**ANSWERS, "status_url": "https://evil.example/r1/status"}
    handler = Recorder(
        {
            f"{QUEUE}/fal-ai/gpt-image-1/edit-image": Response(status=200, json=foreign),
            f"{QUEUE}/fal-ai/gpt-image-1/requests/r1/status": Response(
                status=200, json={"status": "IN_QUEUE", "queue_position": 0}
            ),
        }
    )
    async with client_with(handler) as client:
        handle = await client.submit(INPUT)
        await handle.status()

    assert handle.urls.status_url.startswith(QUEUE)
    assert [r.url for r in handler.seen] == handler.authorized()
    assert all(r.headers["Authorization"] == f"Key {KEY}" for r in handler.seen)
    assert not any("evil" in r.url for r in handler.seen)


async def test_downloads_never_carry_the_key_even_from_a_fal_origin(tmp_path: object) -> None:
    """A download from the queue's own origin still goes without Authorization."""
    from .conftest import make_png

    png = make_png()
    handler = Recorder(
        {f"{QUEUE}/files/": Response(status=200, body=png, headers={"Content-Type": "image/png"})}
    )
    async with client_with(handler) as client:
        from fal_edit_async import ImageFile

        files = await client.download([ImageFile(url=f"{QUEUE}/files/a.png")], str(tmp_path))

    assert 1 == len(files)
    assert [] == handler.authorized()
    assert handler.seen[0].follow_redirects  # no key travels, so redirects may be followed


async def test_api_calls_never_follow_redirects() -> None:
    """Every request that may carry the key asks the transport not to follow redirects."""
    handler = Recorder({QUEUE: Response(status=302, headers={"Location": "https://evil.example"})})
    async with client_with(handler) as client:
        with pytest.raises(APIError, match="not followed"):
            await client.submit(INPUT)

    assert handler.seen and not any(r.follow_redirects for r in handler.seen)


async def test_a_key_echoed_in_an_answer_is_scrubbed() -> None:
    """A server quoting the key back in an error body: the error never shows the key."""
    echo = Response(status=400, json={"detail": f"bad key {KEY}"})
    handler = Recorder({QUEUE: echo})
    async with client_with(handler) as client:
        with pytest.raises(APIError) as caught:
            await client.submit(INPUT)

    assert KEY not in str(caught.value)
    assert KEY not in json.dumps(caught.value.body)
    assert "<redacted>" in str(caught.value)


SLASHED = "key-id:se/cret"  # fal keys are id:secret; a slash is JSON-escapable as "\\/"


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(SLASHED, id="as-is"),
        pytest.param(SLASHED.replace("/", "\\/"), id="json-escaped-slash"),
        pytest.param("key-id%3Ase%2Fcret", id="percent-encoded"),
        pytest.param("key-id%3Ase%2Fcret".replace("%", "+"), id="not-the-key"),
    ],
)
async def test_the_core_scrubs_every_form_of_the_key_from_bodies_and_headers(echo: str) -> None:
    """The key quoted back as is, JSON-escaped or percent-encoded, in a body or a header, is
    blanked out before anything reads the answer; other text is left as it was."""
    from fal_edit_async import ClientConfig
    from fal_edit_async._core import Core

    answer = Response(status=400, body=f"detail {echo}".encode(), headers={"X-Echo": echo})
    core = Core(ClientConfig(credentials=SLASHED, queue_url=QUEUE), MockTransport(lambda r: answer))
    resp = await core.request("GET", f"{QUEUE}/x")

    quoted = echo != "key-id+3Ase+2Fcret"
    expected = "<redacted>" if quoted else echo
    assert (f"detail {expected}".encode(), expected) == (resp.body, resp.headers["X-Echo"])


async def test_a_key_split_across_stream_chunks_is_scrubbed_without_holding_back_events() -> None:
    """A status stream quoting the key across chunk boundaries has it blanked out; a chunk
    that cannot end in the start of the key (an event's blank line) is delivered whole."""
    from fal_edit_async import ClientConfig
    from fal_edit_async._core import Core

    body = f'data: {{"log": "FAL_KEY={KEY}"}}\n\n'.encode()
    for size in (1, 3, 7, len(body)):
        transport = MockTransport(lambda r: Response(status=200, body=body), chunk_size=size)
        core = Core(ClientConfig(credentials=KEY, queue_url=QUEUE), transport)
        async with core.stream(f"{QUEUE}/status/stream") as resp:
            chunks = [c async for c in resp.aiter_bytes()]

        assert b'data: {"log": "FAL_KEY=<redacted>"}\n\n' == b"".join(chunks), size
        assert all(chunks), size
    assert [b'data: {"log": "FAL_KEY=<redacted>"}\n\n'] == chunks


async def test_transport_errors_from_a_handler_are_retried_as_network_failures() -> None:
    """A status poll that fails on the network is tried again, through any transport."""
    calls = 0

    def flaky(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransportError("connection failed: reset", url=request.url)
        return Response(status=200, json={"status": "IN_QUEUE", "queue_position": 3})

    async with AsyncClient(
        api_key=KEY,
        queue_url=QUEUE,
        retry=RetryPolicy(wait=False),
        transport=MockTransport(flaky),
    ) as client:
        status = await client.status("r1")

    assert (2, 1) == (calls, client.statistics().retries.transport)
    assert 3 == getattr(status, "position", None)


@pytest.mark.parametrize(
    ("sent", "counted"),
    [pytest.param(False, 0, id="never-connected"), pytest.param(True, 2, id="reset-after-send")],
)
async def test_statistics_count_a_request_once_it_left(sent: bool, counted: int) -> None:
    """``requests`` counts what reached the network: a reset after sending, not a connection
    that never opened (both tried twice)."""

    def failing(request: Request) -> Response:
        raise TransportError("connection failed", url=request.url, sent=sent)

    async with client_with(failing) as client:  # type: ignore[arg-type]
        with pytest.raises(TransportError):
            await client.status("r1")

    assert counted == client.statistics().requests


async def test_mock_stream_delivers_the_body_in_chunks() -> None:
    """A streamed mock answer arrives in ``chunk_size`` pieces, then ends."""
    transport = MockTransport(lambda r: Response(status=200, body=b"abcdefg"), chunk_size=3)
    async with transport.stream(Request(method="GET", url="http://x/")) as resp:
        chunks = [c async for c in resp.aiter_bytes()]

    assert [b"abc", b"def", b"g"] == chunks


@pytest.mark.parametrize(("limit", "read"), [(None, b"abcdefg"), (4, b"abcd"), (3, b"abc")])
async def test_a_stream_read_stops_at_its_limit(limit: int | None, read: bytes) -> None:
    """``read(limit)`` keeps the first ``limit`` bytes and reads no further chunk."""
    transport = MockTransport(lambda r: Response(status=500, body=b"abcdefg"), chunk_size=3)
    async with transport.stream(Request(method="GET", url="http://x/")) as resp:
        assert read == await resp.read(limit)
        rest = [c async for c in resp.aiter_bytes()]
    assert {None: [], 4: [b"g"], 3: [b"def", b"g"]}[limit] == rest


# -- the aiohttp transport, against a real loopback server ----------------------------------


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A loopback server: /body answers 10 bytes, /cut promises 100 and sends 10, /quoted
    sends a malformed Content-Length that quotes the key."""

    async def body(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"0123456789")

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"0123456789")
        assert request.transport is not None
        request.transport.close()
        return resp

    async def quoted(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {KEY}\r\n\r\n{{}}"
        request.transport.write(head.encode())
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_get("/body", body)
    app.router.add_get("/cut", cut)
    app.router.add_get("/quoted", quoted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_body_cut_short_is_a_transport_error(server: str) -> None:
    """Reading a truncated body raises TransportError from the transport's own read."""
    transport = AiohttpTransport()
    try:
        async with transport.stream(Request(method="GET", url=f"{server}/cut")) as resp:
            with pytest.raises(TransportError, match="connection failed"):
                async for _ in resp.aiter_bytes():
                    pass
    finally:
        await transport.aclose()


async def test_a_key_quoted_in_a_transport_error_is_scrubbed(server: str) -> None:
    """aiohttp quotes the malformed header it refused; the core blanks the key out of that
    TransportError, whose chain holds nothing (aiohttp's error shows the request headers)."""
    from fal_edit_async import ClientConfig
    from fal_edit_async._core import Core

    core = Core(ClientConfig(credentials=KEY, queue_url=server), AiohttpTransport())
    try:
        with pytest.raises(TransportError) as caught:
            await core.request("GET", f"{server}/quoted")
    finally:
        await core.aclose()

    assert "Content-Length: <redacted>" in str(caught.value)
    assert (f"{server}/quoted", None, None) == (
        caught.value.url,
        caught.value.__cause__,
        caught.value.__context__,
    )


async def test_the_callers_own_errors_are_not_taken_for_network_failures(server: str) -> None:
    """An OSError raised by the caller inside the stream block stays what it is."""
    transport = AiohttpTransport()
    try:
        with pytest.raises(ConnectionResetError, match="the caller's"):
            async with transport.stream(Request(method="GET", url=f"{server}/body")) as resp:
                async for _ in resp.aiter_bytes():
                    raise ConnectionResetError("the caller's")
    finally:
        await transport.aclose()


async def test_closing_the_transport_ends_a_read_in_another_task() -> None:
    """aclose() under a stream whose server has gone quiet fails its pending read at once
    with TransportError (aiohttp alone leaves it waiting for bytes that never come)."""
    release = anyio.Event()

    async def quiet(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first")
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_get("/quiet", quiet)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/quiet"
    transport = AiohttpTransport()
    read: list[bytes] = []
    first = anyio.Event()

    async def reader() -> None:
        async with transport.stream(Request(method="GET", url=url)) as resp:
            with pytest.raises(TransportError, match="transport was closed"):
                async for chunk in resp.aiter_bytes():
                    read.append(chunk)
                    first.set()

    try:
        with anyio.fail_after(10):  # a hang backstop, not a measurement
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await first.wait()
                await transport.aclose()
    finally:
        release.set()
        await runner.cleanup()
    assert [b"first"] == read


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "request"])
async def test_closed_between_the_headers_and_the_body_is_a_transport_error(
    streamed: bool,
) -> None:
    """aclose() landing after a response's headers arrived, before the body's first read:
    aiohttp fails that read with a bare ``RuntimeError("Connection closed.")``, which took a
    closed client's download for an internal error (and would have taken a submit's lost
    answer for one). Both the streamed and the whole-body read raise TransportError."""
    release = anyio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "10"})
        await resp.prepare(request)  # the headers go out; the body waits
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slow"
    transport = AiohttpTransport()
    send = transport._send

    class CloseAfterHeaders:
        """The request's context, closing the transport as soon as its headers are in."""

        def __init__(self, request: Request) -> None:
            self._opened = send(request)

        async def __aenter__(self) -> object:
            resp = await self._opened.__aenter__()
            await transport.aclose()
            return resp

        async def __aexit__(self, *exc_info: object) -> None:
            await self._opened.__aexit__(*exc_info)

    transport._send = CloseAfterHeaders  # type: ignore[method-assign]
    try:
        with anyio.fail_after(10), pytest.raises(TransportError, match="transport was closed"):
            if streamed:
                async with transport.stream(Request(method="GET", url=url)) as resp:
                    async for _ in resp.aiter_bytes():
                        pass
            else:
                await transport.request(Request(method="GET", url=url))
    finally:
        release.set()
        await transport.aclose()
        await runner.cleanup()


async def test_a_refused_connection_was_never_sent() -> None:
    """Connecting to a closed port fails with sent=False: the one case a submit may retry."""
    with anyio.fail_after(10):  # a hang backstop, not a measurement
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
    transport = AiohttpTransport()
    try:
        with pytest.raises(TransportError) as caught:
            await transport.request(Request(method="POST", url=f"http://127.0.0.1:{port}/x"))
    finally:
        await transport.aclose()
    assert caught.value.sent is False


async def test_a_closed_transport_refuses_use(server: str) -> None:
    """After aclose() the transport raises instead of opening a new session."""
    transport = AiohttpTransport()
    await transport.request(Request(method="GET", url=f"{server}/body"))
    await transport.aclose()
    await transport.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await transport.request(Request(method="GET", url=f"{server}/body"))


@pytest.mark.parametrize(
    ("url", "auth", "carries_key"),
    [
        pytest.param(f"{QUEUE}/x", True, True, id="queue"),
        pytest.param(f"{REST}/storage/upload/initiate", True, True, id="rest"),
        pytest.param(f"{QUEUE}/x", False, False, id="queue-auth-false"),
        pytest.param("https://evil.example/x", True, False, id="other-host"),
        pytest.param("https://queue.example.evil.example/x", True, False, id="lookalike-host"),
        pytest.param("https://queue.example:8443/x", True, False, id="other-port"),
        pytest.param("http://queue.example/x", True, False, id="other-scheme"),
    ],
)
async def test_the_core_sends_the_key_only_to_the_configured_origins(
    url: str, auth: bool, carries_key: bool
) -> None:
    """Whatever URL an operation asks for, the key is added only on the queue and REST origins."""
    from fal_edit_async import ClientConfig
    from fal_edit_async._core import Core

    handler = Recorder({"": Response(status=200)})
    core = Core(
        ClientConfig(credentials=KEY, queue_url=QUEUE, rest_url=REST), MockTransport(handler)
    )
    await core.request("GET", url, auth=auth)
    async with core.stream(url, auth=auth):
        pass

    assert [carries_key, carries_key] == ["Authorization" in r.headers for r in handler.seen]


async def test_the_first_wave_of_requests_loads_the_certificates_once(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch opens with hundreds of requests at once: one of them reads the certificates
    and proxies (tens of milliseconds of CPU), the others wait for it, and all succeed."""
    import ssl

    made: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counted() -> ssl.SSLContext:
        made.append(real())
        return made[-1]

    monkeypatch.setattr("fal_edit_async._tls.ssl.create_default_context", counted)
    transport = AiohttpTransport()
    statuses: list[int] = []

    async def one() -> None:
        resp = await transport.request(Request(method="GET", url=f"{server}/body"))
        statuses.append(resp.status)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(one)
    finally:
        await transport.aclose()
    assert [200] * 64 == statuses
    assert 1 == len(made)


async def test_a_cancelled_first_request_leaves_the_loading_to_the_next(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request loading the certificates is cancelled while it waits for the thread:
    the one waiting behind it loads them in its place, and is answered."""
    import ssl
    import threading

    release = threading.Event()
    calls: list[int] = []
    real = ssl.create_default_context

    def slow_once() -> ssl.SSLContext:
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)  # the first load hangs until the test lets it go
        return real()

    monkeypatch.setattr("fal_edit_async._tls.ssl.create_default_context", slow_once)
    transport = AiohttpTransport()
    try:
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()

            async def cancelled() -> None:
                with first:
                    await transport.request(Request(method="GET", url=f"{server}/body"))

            tg.start_soon(cancelled)
            await anyio.wait_all_tasks_blocked()
            assert [1] == calls
            statuses: list[int] = []

            async def second() -> None:  # queued behind the first
                resp = await transport.request(Request(method="GET", url=f"{server}/body"))
                statuses.append(resp.status)

            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            first.cancel()
            release.set()
        assert first.cancelled_caught
        assert [200] == statuses
    finally:
        release.set()
        await transport.aclose()
