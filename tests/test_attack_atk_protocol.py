"""Attacks on the tolerant reader, bounded memory, submits, webhooks and the sync Client.

The atk-protocol attacker wrote each bug it found as a failing test (``xfail(strict=True)``);
all thirteen are fixed and unmarked. The other tests pin down attacks that held.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import signal
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import ClientConnectionResetError, web
from anyio.from_thread import start_blocking_portal
from nacl.signing import SigningKey

from fal_edit_async import (
    AiohttpTransport,
    AsyncClient,
    Client,
    EditImageInput,
    Limits,
    ServerError,
    Timeouts,
    WebhookKeysError,
    WebhookUnverifiedError,
    _sync_client,
)
from fal_edit_async._sse import SSEDecoder
from fal_edit_async.emulator import Emulator
from fal_edit_async.webhooks import JwksCache

from .conftest import FAST_POLLING, FAST_RETRY, client_for, make_png


def _client_on(base: str, **overrides: Any) -> AsyncClient:
    """A client of a fake fal at ``base`` (every origin), retrying and polling fast."""
    settings: dict[str, Any] = {"retry": FAST_RETRY, "polling": FAST_POLLING, **overrides}
    return AsyncClient(api_key="k:s", queue_url=base, rest_url=base, api_url=base, **settings)


def _image_answer(request: web.Request) -> web.Response:
    """A result naming one 32x24 PNG, served by the same fake at /out.png."""
    image = {
        "url": f"http://{request.host}/out.png",
        "content_type": "image/png",
        "width": 32,
        "height": 24,
    }
    return web.json_response({"images": [image]})


PNG = make_png()
NOW = 1_800_000_000
KEY = SigningKey(b"\x01" * 32)
OTHER = SigningKey(b"\x03" * 32)


def _jwks(*keys: SigningKey) -> bytes:
    entries = [
        {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(bytes(k.verify_key)).rstrip(b"=").decode(),
        }
        for k in keys
    ]
    return json.dumps({"keys": entries}).encode()


def _body(request_id: str = "req-1") -> bytes:
    return json.dumps({"request_id": request_id, "status": "OK", "payload": {}}).encode()


def _signed(key: SigningKey, body: bytes, request_id: str = "req-1") -> dict[str, str]:
    digest = hashlib.sha256(body).hexdigest()
    message = f"{request_id}\nuser-7\n{NOW}\n{digest}".encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": "user-7",
        "X-Fal-Webhook-Timestamp": str(NOW),
        "X-Fal-Webhook-Signature": key.sign(message).signature.hex(),
    }


class _Source:
    """A JWKS endpoint that counts its fetches; ``document=None`` plays an outage."""

    def __init__(self, document: bytes | None) -> None:
        self.document = document
        self.fetches = 0

    async def __call__(self, url: str) -> bytes:
        self.fetches += 1
        if self.document is None:
            raise OSError("fal's JWKS is unreachable")
        return self.document


# -- webhooks ----------------------------------------------------------------------------------


async def test_deliveries_during_a_jwks_outage_do_not_turn_into_a_flood_of_fetches() -> None:
    """Attack: fal's JWKS is unreachable and forged deliveries keep arriving, one a second.
    Each is answered 503 (right), but each also makes a fetch: ``min_refresh`` (60 s), the
    bound docs/webhooks.md promises ("so forged deliveries cannot make it hammer fal"), is
    only applied once a set is held. 20 deliveries in 20 s should make one fetch."""
    clock = [100.0]
    source = _Source(None)
    cache = JwksCache(fetch=source, clock=lambda: clock[0], min_refresh=60)
    body = _body()
    for _ in range(20):
        with pytest.raises(WebhookKeysError):
            await cache.verify(_signed(OTHER, body), body, now=NOW)
        clock[0] += 1
    assert source.fetches <= 1


async def test_a_jwks_nested_too_deeply_is_a_keys_error_not_a_crash() -> None:
    """Attack: the JWKS URL answers 100,000 brackets (a broken proxy, a hostile mirror).
    ``json.loads`` raises RecursionError, which ``from_jwks`` does not catch (the client's
    own ``_protocol._loads`` does); it escapes ``JwksCache.verify`` and the receiver answers
    a bare 500 instead of a counted 503."""
    source = _Source(b"[" * 100_000)
    cache = JwksCache(fetch=source)
    body = _body()
    with pytest.raises(WebhookKeysError):
        await cache.verify(_signed(KEY, body), body, now=NOW)


async def test_forged_deliveries_with_keys_held_make_one_fetch() -> None:
    """Held: with a set held, forged signatures refetch at most once per min_refresh."""
    clock = [100.0]
    source = _Source(_jwks(KEY))
    cache = JwksCache(fetch=source, clock=lambda: clock[0], min_refresh=60)
    body = _body()
    for _ in range(30):
        with pytest.raises(WebhookUnverifiedError):
            await cache.verify(_signed(OTHER, body), body, now=NOW)
        clock[0] += 1
    assert source.fetches == 1


# -- bounded memory ----------------------------------------------------------------------------


def test_a_long_line_in_tiny_chunks_stays_near_max_event_bytes() -> None:
    """Attack: a server sends one ``data:`` line of non-Latin characters, one character (3
    bytes) per TCP segment, as issue #15's "8 MB line in 4 KiB chunks" but smaller pieces.
    ``SSEDecoder`` keeps the unfinished line as a list of the pieces: one 1-character str
    (about 76 bytes) plus a list slot per chunk. A 200,000-character line (600 KB on the
    wire, well under ``max_event_bytes``) then holds about 16 MB; a full 1 MiB line about
    88 MB, per status stream, so a batch of a few jobs passes the 100 MB the hostile-memory
    test allows. The decoder should hold the line in (close to) its own size."""
    decoder = SSEDecoder(max_event_bytes=1 << 20)
    chars = 200_000
    piece = "☕".encode()
    tracemalloc.start()
    try:
        list(decoder.feed(b"data: "))
        for _ in range(chars):
            for _ in decoder.feed(piece):
                pass
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The line itself is 200,000 UCS-2 characters: 400 KB. Allow ten times that.
    assert held < 10 * 2 * chars, f"{held / 1e6:.1f} MB held for a {chars}-character line"


# -- closing the client, and Ctrl-C in the sync client -------------------------------------------


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_closing_the_client_during_a_submit_cancels_the_job_it_made() -> None:
    """Attack: one task submits; fal has stored the POST (billing starts) but not answered
    yet; another task closes the client (a web app shutting down, ``Client.close()`` from
    another thread). ``aclose`` cancels jobs that tasks *wait* on, but a submit in flight
    has no hook: the transport is closed under the shielded POST, its answer is lost, the
    submitter gets a TransportError and the job runs on, paid for, its id known to nobody.
    aclose should let in-flight submits land (bounded by ``Timeouts.cancel``) and cancel
    the jobs they made, as it does for waiters."""
    got_post, release = anyio.Event(), anyio.Event()
    cancels: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.method == "POST":
            got_post.set()  # the queue has stored it: the job exists and will bill
            await release.wait()
            return web.json_response({"request_id": "req-closed"})
        if request.method == "PUT" and request.path.endswith("/cancel"):
            cancels.append(request.path.split("/")[-2])
            return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
        return web.json_response({"status": "IN_PROGRESS", "logs": []}, status=202)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with _serve(app) as base:
        client = AsyncClient(
            api_key="key-id:key-secret",
            queue_url=base,
            rest_url=base,
            api_url=base,
            retry=FAST_RETRY,
            polling=FAST_POLLING,
            timeouts=Timeouts(cancel=5.0),
        )
        outcome: list[object] = []

        async def submit() -> None:
            try:
                outcome.append(await client.submit(EditImageInput(prompt="p", image_urls=[PNG])))
            except Exception as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await got_post.wait()
            tg.start_soon(client.aclose)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert ["req-closed"] == cancels, f"submit ended with {outcome!r}; no cancel was sent"


class _Emu:
    def __init__(self) -> None:
        self.portal_cm = start_blocking_portal("asyncio")
        self.portal = self.portal_cm.__enter__()
        self.emu = Emulator(workers=2, fast_images=True)
        self.portal.call(self.emu.start)

    def close(self) -> None:
        try:
            self.portal.call(self.emu.aclose)
        finally:
            self.portal_cm.__exit__(None, None, None)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    box = _Emu()
    try:
        box.portal.call(box.emu.hold_jobs)
        yield box.emu
    finally:
        box.close()
    assert [] == box.emu.internal_errors


class _InterruptOnSubmitAnswer:
    """A transport that, once fal has answered the first submit POST, delivers SIGINT to
    the main thread (Ctrl-C) and holds the loop until the main thread is handling it: the
    interrupt lands after fal's answer was read, before ``Client.submit`` returns."""

    def __init__(self, interrupted: threading.Event) -> None:
        self.inner = AiohttpTransport()
        self.interrupted = interrupted
        self.armed = True

    async def request(self, request: Any) -> Any:
        resp = await self.inner.request(request)
        if self.armed and request.method == "POST" and "/requests/" not in request.url:
            self.armed = False
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            self.interrupted.wait(10)  # the main thread is in _Task.cancel now
        return resp

    def stream(self, request: Any) -> Any:
        return self.inner.stream(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Ctrl-C as a user's program gets it: Python's own handler, whatever an earlier test
    left (an event loop run in this thread swallows a first SIGINT with its own handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_as_a_sync_submit_is_answered_cancels_the_job(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: Ctrl-C lands just after fal answered a blocking ``Client.submit``. The caller
    raises KeyboardInterrupt and ``_Task.cancel`` cancels the task's scope, but that
    cancel reaches the loop (a task spawned through the portal) after the submit's last
    checkpoint: the coroutine returns the handle normally, ``_body`` discards it, and the
    job fal accepted runs on, paid for, its id given to nobody. guarantees.md: Ctrl-C in a
    blocking call cancels the job "wherever the interrupt lands, even mid-submit". The fix:
    when an interrupted task still produced a JobHandle, cancel that job before re-raising."""
    interrupted = threading.Event()
    original = _sync_client._Task.cancel

    def cancel(self: Any, *, wait: bool = True) -> None:
        interrupted.set()
        original(self, wait=wait)

    monkeypatch.setattr(_sync_client._Task, "cancel", cancel)
    with Client(
        api_key=emu.api_key,
        queue_url=emu.queue_url,
        rest_url=emu.rest_url,
        retry=FAST_RETRY,
        polling=FAST_POLLING,
        timeouts=Timeouts(cancel=5.0),
        transport=_InterruptOnSubmitAnswer(interrupted),
    ) as fal:
        with pytest.raises(KeyboardInterrupt):
            fal.submit(EditImageInput(prompt="interrupted", image_urls=[PNG]))
    assert 1 == len(emu.jobs)
    running = [job.request_id for job in emu.jobs.values() if not job.cancelled]
    assert [] == running, "a job fal accepted was left running after Ctrl-C"


# -- attacks that held -------------------------------------------------------------------------


async def test_a_bare_502_page_from_another_gateway_is_not_resent(png_data_uri: str) -> None:
    """Held: a submit answered 502 with a Cloudflare-style HTML page (not nginx's) and no
    request id is one POST, a ServerError; never a second submit."""
    posts: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        posts.append(request.path)
        page = "<html><body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
        return web.Response(status=502, text=page, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with _serve(app) as base:
        async with AsyncClient(
            api_key="k:s", queue_url=base, rest_url=base, api_url=base, retry=FAST_RETRY
        ) as fal:
            with pytest.raises(ServerError):
                await fal.submit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
    assert 1 == len(posts)


async def test_debug_log_never_shows_an_echoed_key(
    emulator: Emulator, png_data_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Held: FAL_EDIT_LOG=debug level, a server quoting the key back (401 echo, then a
    retried 5xx), and a status stream: no log record holds the key."""
    caplog.set_level(logging.DEBUG, logger="fal_edit_async")
    emulator.schedule_fault("status", "echo_key")
    emulator.schedule_fault("submit", "rate_limit", retry_after=0)
    emulator.release_jobs()
    async with client_for(emulator) as fal:
        handle = await fal.submit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
        with pytest.raises(Exception):  # noqa: B017 - the 401 echo
            await handle.status()
        await handle.result()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET" in text and "POST" in text
    secret = emulator.api_key.partition(":")[2] or emulator.api_key
    assert secret not in text


# -- the tolerant reader, against a sloppy server ----------------------------------------------


def _fake_fal(*, status_payload: dict[str, Any], stream: str = "events") -> web.Application:
    """A fal-like queue: submit answers ``req-x``; the status poll answers ``status_payload``;
    the status stream either sends that payload as an event (``events``) or only keep-alive
    comments, forever (``keepalive``); the result names one image."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        if request.method == "POST":
            return web.json_response({"request_id": "req-x"})
        if path.endswith("/status/stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            if stream in ("events", "retry"):
                retry = "retry: \u00b2\n" if stream == "retry" else ""  # superscript two
                event = f"{retry}data: {json.dumps(status_payload)}\n\n"
                await resp.write(event.encode())
                return resp
            try:
                while True:  # a keep-alive ticker whose status source has stalled
                    await resp.write(b": ping\n\n")
                    await anyio.sleep(0.05)
            except (ConnectionError, ClientConnectionResetError):
                return resp  # the client went away
        if path.endswith("/status"):
            return web.json_response(status_payload)
        if path.endswith("/cancel"):
            return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
        if path.endswith(".png"):
            return web.Response(body=PNG, content_type="image/png")
        png_url = f"http://{request.host}/out.png"
        image = {"url": png_url, "content_type": "image/png", "width": 32, "height": 24}
        return web.json_response({"images": [image]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_a_stream_of_keep_alives_only_falls_back_to_polling(png_data_uri: str) -> None:
    """Attack: the status stream opens and sends fal's keep-alive comment forever, but no
    status event (its status source stalled), while a poll says COMPLETED. Every comment
    resets ``Timeouts.stream_idle``, the stream never ends and never errs, so ``edit()``
    waits for ever (here: until the test's 5 s bound). A stream with no event for
    ``stream_idle`` should be treated as silent (poll, or reconnect, then poll)."""
    done = {"status": "COMPLETED", "logs": [], "metrics": {}}
    app = _fake_fal(status_payload=done, stream="keepalive")
    async with _serve(app) as base:
        async with _client_on(base, timeouts=Timeouts(stream_idle=0.5, cancel=2.0)) as fal:
            with anyio.fail_after(5):
                output = await fal.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
    assert output.images


async def test_a_completed_status_with_an_error_object_is_read_as_failed(
    png_data_uri: str,
) -> None:
    """Attack: a COMPLETED status whose ``error`` is an object, not a string (as ``detail``
    already is in fal's error bodies). The strict ``str`` hook refuses it, so the status
    itself is a ProtocolError, on the stream and on every poll: the job can never be read
    as finished, a batch re-attaches to it run after run. ``error`` only informs (the
    result endpoint has the verdict): read it as text, as log messages are."""
    failed = {
        "status": "COMPLETED",
        "logs": [],
        "metrics": {},
        "error": {"message": "runner crashed", "code": 500},
        "error_type": "runner_disconnected",
    }
    app = _fake_fal(status_payload=failed)
    async with _serve(app) as base:
        async with _client_on(base) as fal:
            handle = fal.handle("req-x")
            with anyio.fail_after(10):
                completed = await handle.wait()
    assert completed.failed


async def test_a_huge_error_body_on_the_status_stream_is_not_read_whole(
    png_data_uri: str,
) -> None:
    """Attack: the status stream answers 503 with a body of 32 MiB (it could be endless).
    ``_stream_once`` raises ``await core.error_of(resp)``, which reads the whole body
    (``StreamResponse.read``, "error answers, which are small"), unbounded: the bound
    guarantees.md promises ("an answer larger than Limits.max_response_bytes is a
    ProtocolError, read no further") does not hold on this path. Here the limit is 64 KiB;
    the server finishes sending all 32 MiB (far more than loopback buffers hold), so the
    client read all of it, three times (each reconnect)."""
    body_size = 32 * 2**20
    finished: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        if request.method == "POST":
            return web.json_response({"request_id": "req-big"})
        if path.endswith("/status/stream"):
            resp = web.StreamResponse(status=503, headers={"Content-Type": "text/plain"})
            await resp.prepare(request)
            chunk = b"x" * 2**16
            try:
                for _ in range(body_size // len(chunk)):
                    await resp.write(chunk)
                await resp.write_eof()
            except (ConnectionError, ClientConnectionResetError):
                finished.append(False)
                return resp
            finished.append(True)
            return resp
        if path.endswith("/status"):
            return web.json_response({"status": "COMPLETED", "logs": [], "metrics": {}})
        return _image_answer(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with _serve(app) as base:
        async with _client_on(base, limits=Limits(max_response_bytes=2**16)) as fal:
            with anyio.fail_after(20):
                await fal.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
    assert finished and not any(finished), "the client read a 32 MiB error body whole"


async def test_an_unsigned_delivery_is_refused_before_its_body_is_read() -> None:
    """Attack: anyone can POST to a webhook URL. A delivery with no signature headers at all
    announces a 16 MB body (just under ``max_body``) and sends it slowly. The receiver
    reads (and holds) the whole body before looking at a single header, so each such
    connection holds up to 16 MiB, with no bound on how many: an unauthenticated memory
    flood. The cheap checks (the four headers present, the timestamp in its window, the
    signature 64 bytes of hex) can all be made first; here the 401 should come at once,
    with the body still unsent (the test waits at most 3 s for it)."""
    from fal_edit_async.webhooks import WebhookKeys, create_app

    app = create_app(jwks=WebhookKeys([bytes(KEY.verify_key)]))
    async with _serve(app) as base:
        host, port = base.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            head = (
                "POST / HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {16 * 10**6}\r\n\r\n"
            )
            await stream.send(head.encode())
            answer = b""
            with anyio.move_on_after(3):
                while b"\r\n" not in answer:
                    answer += await stream.receive()
    assert answer.startswith(b"HTTP/1.1 401"), f"no answer without the body: {answer!r}"


async def test_a_tag_attempt_in_superscript_digits_is_dropped_not_a_500() -> None:
    """Attack: anyone may POST to a batch's webhook URL with a query of their own.
    ``read_tag`` checks ``attempt.isdigit()``, which is true for "²", then ``int("²")``
    raises ValueError, before the signature is looked at: the receiver answers a bare 500
    (not a counted 4xx), and a 500 asks fal to deliver again. ``_transport`` already knows
    this trap (``isascii() and isdigit()``). The tag should be dropped, and the unsigned
    delivery refused 401."""
    from fal_edit_async.webhooks import STATISTICS, WebhookKeys, create_app

    app = create_app(jwks=WebhookKeys([bytes(KEY.verify_key)]), tag_secret=b"s" * 32)
    async with _serve(app) as base:
        query = "fal_batch=b&fal_item=i&fal_attempt=%C2%B2&fal_tag=00"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/?{query}", data=_body()) as resp:
                status = resp.status
    assert 401 == status
    assert 1 == sum(app[STATISTICS].rejected.values())


async def test_a_retry_field_in_superscript_digits_is_ignored(png_data_uri: str) -> None:
    """Attack: a status stream sends ``retry: \u00b2`` (SUPERSCRIPT TWO) before its event.
    ``SSEDecoder`` checks ``value.isdigit()`` (true) then calls ``int(value)``, which
    raises ValueError: not a ProtocolError, not caught by the stream's fallback, so
    ``edit()`` of a paid, completed job fails with a bare ValueError. WHATWG: a retry value
    not made of ASCII digits is ignored."""
    done = {"status": "COMPLETED", "logs": [], "metrics": {}}
    async with _serve(_fake_fal(status_payload=done, stream="retry")) as base:
        async with _client_on(base) as fal:
            output = await fal.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
    assert output.images


async def test_a_request_id_with_a_fragment_mark_still_polls_the_status_url(
    png_data_uri: str,
) -> None:
    """Attack: a sloppy or hostile queue answers a submit with ``request_id: "abc#1"``.
    ``_usable_request_id`` refuses only ``/``, CR, LF and NUL, and ``job_urls`` pastes the
    id raw: ``.../requests/abc#1/status`` loses everything after ``#`` (``?`` would turn it
    into a query), so the status poll and the cancel PUT go to ``.../requests/abc``, the
    result URL of another id. The id should be percent-encoded in URLs (or refused)."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(f"{request.method} {request.path}")
        if request.method == "POST":
            return web.json_response({"request_id": "abc#1"})
        return web.json_response({"status": "IN_QUEUE", "queue_position": 0}, status=202)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with _serve(app) as base:
        async with AsyncClient(
            api_key="k:s", queue_url=base, rest_url=base, api_url=base, retry=FAST_RETRY
        ) as fal:
            handle = await fal.submit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
            await handle.status()
    assert seen[-1].startswith("GET ") and seen[-1].endswith("/status"), seen


async def test_logs_larger_than_an_answer_may_be_do_not_abort_a_paid_job(
    png_data_uri: str,
) -> None:
    """Attack (issue #15's 800 MB of logs): a job's status carries all its log lines so
    far. Its stream event outgrows ``max_event_bytes``, so the stream is given up for
    polling, as designed; but every poll asks ``logs=1`` and the answer (all the lines)
    is over ``max_response_bytes``: a ProtocolError ends the wait of a job that succeeded,
    and every re-attach fails the same way, since logs only grow. guarantees.md: log lines
    are "never a reason to abort a paid job". A poll too large with logs should be asked
    again with ``logs=0``. Limits are scaled down here (64 KiB events, 256 KiB answers)."""
    lines = [{"message": "y" * 1000} for _ in range(600)]  # ~600 KB of logs

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        with_logs = request.query.get("logs") == "1"
        done = {"status": "COMPLETED", "metrics": {}, "logs": lines if with_logs else None}
        if request.method == "POST":
            return web.json_response({"request_id": "req-logs"})
        if path.endswith("/status/stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError, ClientConnectionResetError):
                await resp.write(f"data: {json.dumps(done)}\n\n".encode())
            return resp
        if path.endswith("/status"):
            return web.json_response(done)
        return _image_answer(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with _serve(app) as base:
        async with _client_on(
            base, limits=Limits(max_event_bytes=2**16, max_response_bytes=2**18)
        ) as fal:
            output = await fal.edit(EditImageInput(prompt="p", image_urls=[png_data_uri]))
    assert output.images
