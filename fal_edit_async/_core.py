"""The core every operation shares: configuration, a transport, counters, and the key policy.

Job handles, batches, uploads, downloads and status streams take a :class:`Core`, never the
client. The core decides where the key goes (``Authorization`` only on the configured queue,
REST and platform API origins, and never on a request made with ``auth=False``) and blanks
the key out of every answer before anyone reads it (bodies, headers, the chunks of a stream
from those origins, and transport errors), so both hold for any :class:`Transport`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, contextmanager
from contextvars import ContextVar
from itertools import chain
from types import TracebackType
from typing import Any, AnyStr, TypeAlias, TypeVar
from urllib.parse import quote, quote_plus, urlencode

import anyio
import anyio.lowlevel
from multidict import CIMultiDict, CIMultiDictProxy

from ._config import ClientConfig
from ._exceptions import APIError, EventLoopError, TransportError
from ._logging import logger
from ._protocol import Origins, api_error
from ._statistics import Counters
from ._transport import Request, Response, StreamResponse, Transport

__all__ = ["ClientClosedError", "Core"]

T = TypeVar("T")
#: What :meth:`Core.aclose` awaits for each task still waiting on a job (its cancel).
_Hook: TypeAlias = Callable[[], Coroutine[Any, Any, object]]

#: The core whose :meth:`Core.aclose` is running this task's on-close hooks: their cancels may
#: still be sent, while every other request is already refused.
_CLOSING: ContextVar[Core | None] = ContextVar("fal_edit_async_closing", default=None)
#: The task running an on-close hook (an aclose() there would wait on itself).
_HOOK_TASK: ContextVar[asyncio.Task[Any] | None] = ContextVar("fal_edit_async_hook", default=None)

_NOT_ASYNCIO = (
    "fal_edit_async runs on asyncio only (aiohttp, its HTTP client, is asyncio-only): use "
    "asyncio.run() or anyio.run(..., backend='asyncio'), not trio; or the synchronous Client, "
    "which runs its own asyncio loop"
)
_OTHER_LOOP = (
    "this client was first used on another asyncio event loop, which its connections belong "
    "to (a client made at module level, used by two asyncio.run() calls?): create the client "
    "inside the function the loop runs (async with AsyncClient() as fal: ...), or use the "
    "synchronous Client, which keeps one loop for its whole life"
)

#: The most of a streamed error answer that is read: fal's error bodies are a few hundred bytes.
_ERROR_BODY_BYTES = 64 * 2**10
_REDACTED = "<redacted>"
# Characters no form of quoting changes (JSON escapes, percent-encoding): a run of them is in
# every form of the key, so one ``in`` check rules all forms out in the common case.
_PLAIN_RUN = re.compile(r"[A-Za-z0-9._~-]+")


class ClientClosedError(RuntimeError):
    """A request refused, before it was sent, because the client is closed."""


class _Scrubber:
    """Blanks one key out of text and bytes, in each form a server may quote it back: as is,
    JSON-escaped (``\\/``, ``\\uXXXX``) and percent-encoded (a URL in a ``Location``)."""

    def __init__(self, key: str) -> None:
        forms = {
            key,
            json.dumps(key)[1:-1],
            json.dumps(key, ensure_ascii=False)[1:-1],
            json.dumps(key)[1:-1].replace("/", "\\/"),
            quote(key, safe=""),
            quote_plus(key, safe=""),
        }
        self._text = sorted(forms, key=len, reverse=True)  # longest first: none hides another
        self._data = [form.encode() for form in self._text]
        probe = max(_PLAIN_RUN.findall(key), key=len, default="")
        self._probe_text = probe
        self._probe_data = probe.encode()

    @staticmethod
    def _has(value: AnyStr, probe: AnyStr, forms: list[AnyStr]) -> bool:
        if probe:
            return probe in value
        return any(form in value for form in forms)

    def blank(self, data: bytes) -> bytes:
        """``data`` without the key; the same object when it held none (the common case)."""
        if not self._has(data, self._probe_data, self._data):
            return data
        for form in self._data:
            data = data.replace(form, _REDACTED.encode())
        return data

    def blank_text(self, text: str) -> str:
        """``text`` without the key; the same object when it held none."""
        if not self._has(text, self._probe_text, self._text):
            return text
        for form in self._text:
            text = text.replace(form, _REDACTED)
        return text

    def blank_headers(self, headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
        """``headers`` without the key in any name or value (a ``Location`` quoting it)."""
        items = list(headers.items())
        # One search of all of them (the probe holds no newline): the common case, per answer.
        if not self._has("\n".join(chain.from_iterable(items)), self._probe_text, self._text):
            return headers
        if all(self.blank_text(k) is k and self.blank_text(v) is v for k, v in items):
            return headers
        clean = CIMultiDict((self.blank_text(k), self.blank_text(v)) for k, v in items)
        return CIMultiDictProxy(clean)

    def blank_error(self, exc: TransportError) -> TransportError:
        """``exc``, or a copy without the key: aiohttp quotes a malformed header it refused,
        which is the server's text (and so perhaps the key)."""
        text = str(exc)
        clean = self.blank_text(text)
        if clean is text:
            return exc
        suffix = f" ({exc.url})" if exc.url else ""
        return TransportError(clean.removesuffix(suffix), url=exc.url, sent=exc.sent)

    def held_back(self, data: bytes) -> int:
        """How many bytes at the end of ``data`` could begin a form of the key: a stream keeps
        them until the next chunk shows whether the key was split across the two."""
        held = 0
        for form in self._data:
            i = data.find(form[:1], max(0, len(data) - len(form) + 1))
            while i != -1 and len(data) - i > held:
                if form.startswith(data[i:]):
                    held = len(data) - i
                    break
                i = data.find(form[:1], i + 1)
        return held


class _ScrubbedChunks:
    """A stream's chunks with the key blanked out, even when it is split across two of them
    (a class, like the transports' chunks: nothing to finalise)."""

    def __init__(self, chunks: AsyncIterator[bytes], scrubber: _Scrubber) -> None:
        self._chunks = chunks
        self._scrubber = scrubber
        self._pending = b""
        self._done = False

    def __aiter__(self) -> _ScrubbedChunks:
        return self

    async def __anext__(self) -> bytes:
        while not self._done and (chunk := await self._read()) is not None:
            data = self._scrubber.blank(self._pending + chunk if self._pending else chunk)
            held = self._scrubber.held_back(data)
            self._pending = data[len(data) - held :]
            if len(data) > held:
                return data[: len(data) - held]
        self._done = True
        if self._pending:
            rest, self._pending = self._pending, b""
            return rest  # a beginning of the key, never the whole of it
        raise StopAsyncIteration

    async def _read(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None
        except TransportError as exc:
            error = self._scrubber.blank_error(exc)
            if error is exc:
                raise
        raise error  # outside the except block: not chained to the one that quoted the key


class _Streamed:
    """The ``async with`` of :meth:`Core.stream` (a class: twice per job, where a generator
    and an exit stack would cost more calls than the status events read inside)."""

    __slots__ = ("_core", "_opened", "_request")

    def __init__(self, core: Core, request: Request) -> None:
        self._core = core
        self._request = request
        self._opened: AbstractAsyncContextManager[StreamResponse] | None = None

    async def __aenter__(self) -> StreamResponse:
        core, request = self._core, self._request
        opened = core.transport.stream(request)
        resp = await core._send(opened.__aenter__(), request)
        self._opened = opened  # entered: exited on the way out
        return core._scrubbed_stream(resp, request.url)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        opened, self._opened = self._opened, None
        if opened is None:
            return None
        return await opened.__aexit__(exc_type, exc, tb)


class Core:
    """Configuration, transport and counters for one client; closed with it.

    Args:
        config: the client's configuration.
        transport: the HTTP transport (the core closes it).
    """

    def __init__(self, config: ClientConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.stats = Counters()
        self._auth_origins = Origins(config.queue_url, config.rest_url, config.api_url)
        creds = config.credentials
        self._scrubber = _Scrubber(creds.key) if creds is not None else None
        self._authorization = creds.header_value if creds is not None else None
        self._closed = False
        self._on_close: dict[object, _Hook] = {}
        #: Set once :meth:`aclose` ran its hooks, and once it ended (None before it began).
        self._hooks_ran: anyio.Event | None = None
        self._closed_down: anyio.Event | None = None
        # The loop this core's connections belong to: set by the first check_loop() (weak, so
        # a finished asyncio.run() does not keep its loop alive).
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran."""
        return self._closed

    @property
    def open(self) -> bool:
        """True while requests may be sent: until :meth:`aclose`, and in its on-close hooks."""
        return not self._closed or _CLOSING.get() is self

    def check_open(self) -> None:
        """Raise :class:`ClientClosedError` (a ``RuntimeError``) once :meth:`aclose` ran: a
        closed client is not reused, and nothing is sent."""
        if not self.open:
            raise ClientClosedError("this client is closed; create a new one")

    def check_loop(self) -> None:
        """Raise :class:`EventLoopError` off asyncio (trio) or on a loop other than the first
        one this core ran on; binds the core to the running loop on first use."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise EventLoopError(_NOT_ASYNCIO) from None
        if self._loop is None:
            self._loop = weakref.ref(loop)
        elif self._loop() is not loop:
            raise EventLoopError(_OTHER_LOOP)

    @contextmanager
    def on_close(self, hook: _Hook) -> Iterator[None]:
        """While inside, ``hook`` is awaited should the core be closed, before the transport
        is: a job a task still waits on is cancelled on fal, not left running and billed."""
        token = object()
        self._on_close[token] = hook
        try:
            yield
        finally:
            self._on_close.pop(token, None)

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """Inside, this task's requests still go out once :meth:`aclose` began, and aclose
        waits for the block to end (bounded by ``Timeouts.cancel``) before it closes the
        transport: a cancel under way (waiting out a 429, say) is not cut off."""
        done = anyio.Event()

        async def until_done() -> None:
            await done.wait()

        marker = _CLOSING.set(self)
        try:
            with self.on_close(until_done):
                yield
        finally:
            done.set()
            _CLOSING.reset(marker)

    async def aclose(self) -> None:
        """Refuse new requests, run the on-close hooks (together, bounded by
        ``Timeouts.cancel``), then close the transport; all shielded, so a cancelled caller
        still cancels its jobs and releases its sockets. A second call waits for the first
        to end: whoever closes the client may then leave, the cancels sent."""
        if self._closed_down is not None:  # a close is under way, or done: wait for it
            await self._wait_for(self._closed_down)
            return
        self._closed = True
        done = self._closed_down = anyio.Event()
        hooks, self._on_close = list(self._on_close.values()), {}
        ran = self._hooks_ran = anyio.Event()
        with anyio.CancelScope(shield=True):
            try:
                if hooks:
                    await self._run_on_close(hooks)
            finally:
                ran.set()
                try:
                    await self.transport.aclose()
                finally:
                    done.set()

    @contextmanager
    def user_code(self) -> Iterator[None]:
        """Inside, a callback of the caller's runs: even within a close's hooks its requests
        (and its tasks') are refused once the client is closed, as anywhere else."""
        marker = _CLOSING.set(None)
        try:
            yield
        finally:
            _CLOSING.reset(marker)

    async def hooks_ran(self) -> None:
        """Once a close began, wait until its on-close hooks ended (bounded as they are by
        ``Timeouts.cancel``): what they write (a batch's journal) must still be open."""
        if self._hooks_ran is not None:
            await self._wait_for(self._hooks_ran)

    async def _wait_for(self, step: anyio.Event) -> None:
        """Wait, shielded, for a step of a close under way; never from one of its hooks (a
        callback it ran), which it waits on, and bounded: a task a hook itself awaits
        would wait on it for ever."""
        hook = _HOOK_TASK.get()
        if hook is not None and hook is asyncio.current_task():
            return
        with anyio.CancelScope(shield=True) as waiting:
            waiting.deadline = anyio.current_time() + 2 * self.config.timeouts.cancel
            await step.wait()

    async def _run_on_close(self, hooks: list[_Hook]) -> None:
        marker = _CLOSING.set(self)  # copied into the hooks' tasks: their requests may leave
        try:
            with anyio.move_on_after(self.config.timeouts.cancel):
                async with anyio.create_task_group() as tg:
                    for hook in hooks:
                        tg.start_soon(_quietly, hook)
        finally:
            _CLOSING.reset(marker)

    async def prepare(self) -> None:
        """A checkpoint, then the transport's set-up for its first request (when it has one,
        as ``AiohttpTransport.prepare``): before a shielded request, so that cancelling
        can end a set-up that blocks."""
        await anyio.lowlevel.checkpoint()
        prepare = getattr(self.transport, "prepare", None)
        if prepare is not None:
            await prepare()

    def may_authorize(self, url: str) -> bool:
        """True when ``url`` is on an origin the key may be sent to."""
        return url in self._auth_origins

    def scrub(self, body: bytes) -> bytes:
        """``body`` with the key blanked out, should a server quote it back in an answer.

        Error bodies end up in exception messages, logs and journals; the key must not.
        """
        return self._scrubber.blank(body) if self._scrubber is not None else body

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        auth: bool,
        **fields: Any,
    ) -> Request:
        self.check_open()
        self.check_loop()
        out = dict(headers or {})
        if auth and self._authorization is not None and self.may_authorize(url):
            out["Authorization"] = self._authorization
        return Request(method=method, url=url, headers=out, **fields)

    async def _send(self, step: Awaitable[T], request: Request | None = None) -> T:
        """Await the transport's send, counting the request once it left: answered, or failed
        after it was sent (a reset). A request the transport refused locally (a header
        aiohttp rejects) or whose connection never opened was not sent, so
        ``statistics().requests`` leaves it out. Each one is logged at DEBUG.
        """
        started = time.monotonic()
        try:
            result = await step
        except TransportError as exc:
            self.stats.requests += exc.sent
            error = self._scrubber.blank_error(exc) if self._scrubber is not None else exc
            if request is not None:
                self._log(request, started, None, f"failed: {error}")
            if error is exc:
                raise
        else:
            self.stats.requests += 1
            if request is not None:
                self._log(request, started, result, "")
            return result
        raise error  # outside the except block: not chained to the one that quoted the key

    def _log(self, request: Request, started: float, answer: object, failure: str) -> None:
        """One DEBUG line: method, URL, status (or the failure), duration, request id."""
        if not logger.isEnabledFor(logging.DEBUG):
            return
        url = request.url
        if request.params:
            url += ("&" if "?" in url else "?") + urlencode(request.params)
        headers = getattr(answer, "headers", None)
        request_id = headers.get("x-fal-request-id") if headers is not None else None
        outcome = failure or str(getattr(answer, "status", "?"))
        line = f"{request.method} {url} {outcome} {(time.monotonic() - started) * 1000:.0f} ms"
        if request_id:
            line += f" request_id={request_id}"
        if self._scrubber is not None:  # no URL we build holds the key; this makes it certain
            line = self._scrubber.blank_text(line)
        logger.debug("%s", line)

    def _scrubbed(self, resp: Response) -> Response:
        if self._scrubber is None:
            return resp
        body = self._scrubber.blank(resp.body)
        headers = self._scrubber.blank_headers(resp.headers)
        if body is resp.body and headers is resp.headers:
            return resp
        return Response(status=resp.status, headers=headers, body=body, url=resp.url)

    def _scrubbed_stream(self, resp: StreamResponse, url: str) -> StreamResponse:
        if self._scrubber is None:
            return resp
        chunks = resp.aiter_bytes()
        # Only the origins the key goes to can quote it (a status stream's logs); a download
        # from the CDN is left as it is, its bytes not searched.
        if self.may_authorize(url):
            chunks = _ScrubbedChunks(chunks, self._scrubber)
        headers = self._scrubber.blank_headers(resp.headers)
        return StreamResponse(status=resp.status, headers=headers, url=resp.url, chunks=chunks)

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | AsyncIterable[bytes | memoryview] | None = None,
        auth: bool = True,
        read_timeout: float | None = None,
    ) -> Response:
        """Send one request and read the whole answer (never follows redirects).

        ``auth=False`` never sends the key, even to a fal origin (a presigned upload URL).
        ``read_timeout`` replaces ``Timeouts.read`` for this request (a submit's is longer).
        """
        request = self._request(
            method,
            url,
            headers=headers,
            auth=auth,
            json=json,
            params=params,
            data=data,
            read_timeout=read_timeout,
            max_body=self.config.limits.max_response_bytes,  # what a server sends is bounded
        )
        return self._scrubbed(await self._send(self.transport.request(request), request))

    def stream(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        read_timeout: float | None = None,
    ) -> AbstractAsyncContextManager[StreamResponse]:
        """GET a response whose body is read inside the ``async with`` block.

        With ``auth=False`` (downloads) redirects are followed, since no key travels.
        """
        request = self._request(
            "GET",
            url,
            headers=headers,
            auth=auth,
            params=params,
            follow_redirects=not auth,
            read_timeout=read_timeout,
        )
        return _Streamed(self, request)

    async def error_of(self, resp: StreamResponse) -> APIError:
        """The typed error for a streamed non-2xx answer, its body read and scrubbed (a
        download's too, whose chunks are not)."""
        # An error's useful part is its first lines; the rest is not read, so a huge (or
        # endless) error page cannot hold the memory max_response_bytes bounds elsewhere.
        limit = min(_ERROR_BODY_BYTES, self.config.limits.max_response_bytes)
        return api_error(resp.status, resp.headers, self.scrub(await resp.read(limit)))


async def _quietly(hook: _Hook) -> None:
    """One on-close hook: its failure is logged, never raised out of ``aclose`` (nor does it
    stop the other hooks' cancels)."""
    _HOOK_TASK.set(asyncio.current_task())
    try:
        await hook()
    except Exception:
        logger.warning("an on-close hook failed", exc_info=True)
