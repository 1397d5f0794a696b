"""The HTTP seam: a :class:`Transport` protocol, its aiohttp implementation, and a mock.

Everything above this module speaks :class:`Request`, :class:`Response` and
:class:`StreamResponse`; only :class:`AiohttpTransport` sees aiohttp, and it translates
aiohttp's failures into :class:`TransportError` inside its own operations (connecting, and
reading bodies), never around the caller's code. A transport knows nothing of keys: which
requests carry ``Authorization`` is the core's decision, so it holds for any transport.

:class:`MockTransport` (httpx's model) answers from a plain function, for unit tests of the
client's own logic without a server::

    def handler(request: Request) -> Response:
        return Response(status=200, json={"request_id": "abc"})

    async with AsyncClient(api_key="k", transport=MockTransport(handler)) as fal: ...
"""

from __future__ import annotations

import inspect
import json as jsonlib
import ssl
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from enum import Enum
from types import TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio.to_thread
import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from ._config import DEFAULT_TIMEOUTS, DEFAULT_USER_AGENT, Timeouts
from ._exceptions import ProtocolError, TransportError
from ._protocol import api_error, decode_json
from ._tls import load_default_context

__all__ = [
    "AiohttpTransport",
    "AnswerTooLargeError",
    "MockTransport",
    "Request",
    "Response",
    "StreamResponse",
    "Transport",
    "body_too_large",
]

T = TypeVar("T")

#: A request body streamed from memory or disk.
Body: TypeAlias = bytes | AsyncIterable[bytes | memoryview]
_CHUNK = 256 * 1024


def _headers_repr(headers: Mapping[str, str]) -> str:
    # A Request is public and holds Authorization: a recorder, a log line or a debugger
    # showing it must not show the key.
    return repr(
        {k: "<redacted>" if k.lower() == "authorization" else v for k, v in headers.items()}
    )


def _headers(value: Mapping[str, str] | None) -> CIMultiDictProxy[str]:
    if isinstance(value, CIMultiDictProxy):
        return value
    return CIMultiDictProxy(CIMultiDict(value or {}))


@attrs.frozen(kw_only=True)
class Request:
    """One HTTP request, as the core hands it to a transport.

    ``follow_redirects`` is only ever true for requests that carry no key (downloads);
    ``read_timeout`` replaces ``Timeouts.read`` as the longest wait for the next bytes;
    ``max_body`` bounds the answer :meth:`Transport.request` reads (more is a
    :class:`ProtocolError`, raised before the rest is read). Its repr never shows the
    ``Authorization`` header's value.
    """

    method: str
    url: str
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=_headers_repr)
    json: Any = None
    data: Body | None = None
    follow_redirects: bool = False
    read_timeout: float | None = None
    max_body: int | None = None


def _content_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").partition(";")[0].strip().lower()


class AnswerTooLargeError(ProtocolError):
    """An answer grew past its request's ``max_body`` (``Limits.max_response_bytes``)."""


def body_too_large(request: Request) -> ProtocolError:
    """The error for an answer over ``request.max_body``."""
    return AnswerTooLargeError(
        f"answer larger than {request.max_body} bytes (Limits.max_response_bytes)",
        details=[f"{request.method} {request.url}"],
    )


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Content-Length", "").strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    return int(value) if value.isascii() and value.isdigit() else None


@attrs.frozen(kw_only=True, init=False)
class Response:
    """A fully read answer. ``json=`` builds the body from a value (for mocks)."""

    status: int
    headers: CIMultiDictProxy[str] = attrs.field(factory=dict, converter=_headers)
    body: bytes = b""
    url: str = ""

    def __init__(
        self,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        url: str = "",
        json: Any = None,
    ) -> None:
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.__attrs_init__(status=status, headers=headers, body=body, url=url)

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    @property
    def content_type(self) -> str:
        """The media type of ``Content-Type``, lower-cased, without parameters."""
        return _content_type(self.headers)

    def json(self, what: str) -> Any:
        """The body as JSON, or :class:`ProtocolError` naming ``what`` it was for."""
        return decode_json(self.body, what=what)

    def raise_for_status(self) -> None:
        """Raise the typed :class:`APIError` for a non-2xx status."""
        if not self.ok:
            raise api_error(self.status, self.headers, self.body)


class StreamResponse:
    """An answer whose body is read incrementally, inside the transport's ``stream()`` block.

    Reading it after the block ended is a bug. Failures while reading are the transport's:
    :class:`TransportError`, like any other network failure.
    """

    def __init__(
        self,
        *,
        status: int,
        headers: Mapping[str, str] | None,
        url: str,
        chunks: AsyncIterator[bytes],
    ) -> None:
        self.status = status
        self.headers = _headers(headers)
        self.url = url
        self._chunks = chunks

    def __repr__(self) -> str:
        return f"<StreamResponse {self.status} {self.url}>"

    @property
    def content_type(self) -> str:
        """The media type of ``Content-Type``, lower-cased, without parameters."""
        return _content_type(self.headers)

    @property
    def content_length(self) -> int | None:
        """``Content-Length``, when the server sent a valid one."""
        return _content_length(self.headers)

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (each at most 256 KiB)."""
        return self._chunks

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body, or its first ``limit`` bytes: reading stops there, the
        rest is never read (an error answer may be a server's endless page)."""
        if limit is None:
            return b"".join([chunk async for chunk in self._chunks])
        buffer = bytearray()
        async for chunk in self._chunks:
            buffer += chunk
            if len(buffer) >= limit:
                break
        return bytes(buffer[:limit])


class Transport(Protocol):
    """What the client needs from HTTP: whole answers, streamed answers, and a close.

    Implement it to put the client on another HTTP stack; :class:`AiohttpTransport` is the
    default, :class:`MockTransport` answers in memory. A transport never follows a redirect
    unless ``request.follow_redirects`` says so, raises :class:`TransportError` (with
    ``sent=False`` only when the request provably never left) for network failures, never
    reads more of an answer than ``request.max_body`` (see :func:`body_too_large`), and
    delivers bodies with their ``Content-Encoding`` undone (checking ``Content-Length``
    against the encoded bytes it read).
    """

    async def request(self, request: Request) -> Response:
        """Send ``request`` and read the whole answer."""
        ...

    def stream(self, request: Request) -> AbstractAsyncContextManager[StreamResponse]:
        """Send ``request``; the answer's body is read inside the ``async with`` block."""
        ...

    async def aclose(self) -> None:
        """Release every connection; a second call does nothing."""
        ...


class _State(Enum):
    UNOPENED = 1  # no session yet; the first request creates it
    OPENED = 2  # a live session
    CLOSED = 3  # closed for good; any further use is a bug


#: NO_PROXY matching as urllib (and so aiohttp) does it; typeshed does not list it.
_no_proxy: Callable[[str, dict[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]


class AiohttpTransport:
    """The default transport: one ``aiohttp.ClientSession``, opened on first use.

    It honours the environment as fal-client (httpx) does: ``HTTPS_PROXY`` / ``HTTP_PROXY``
    / ``NO_PROXY`` (credentials in the proxy's URL), and ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` for the certificates it trusts, read once, when the first request opens
    the session. ``trust_env=False`` ignores all of them. ``~/.netrc`` is never read: its
    passwords must not go to a CDN.

    Args:
        timeouts: ``connect`` and ``read`` (per wait for bytes; there is no total, so a long
            stream or a big download is not cut off while data keeps arriving).
        max_connections: open sockets at most.
        user_agent: the ``User-Agent`` header.
        trust_env: read proxies and certificate locations from the environment.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_connections: int = 512,
        user_agent: str = DEFAULT_USER_AGENT,
        trust_env: bool = True,
    ) -> None:
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._user_agent = user_agent
        self._trust_env = trust_env
        self._ssl: ssl.SSLContext | None = None
        #: Set while one task reads the certificates and proxies (see _ensure_open).
        self._loading: anyio.Event | None = None
        self._proxies: dict[str, str] = {}
        #: The proxy for each (scheme, host, port), or None: worked out once per origin.
        self._proxy_of: dict[tuple[str, str, int | None], str | None] = {}
        self._session: aiohttp.ClientSession | None = None
        self._state = _State.UNOPENED
        self._streams: set[_ReadChunks] = set()
        # No total: a status stream or a big download may rightly take long.
        self._default_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.read
        )

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self._max_connections})"

    def _closed(self) -> bool:
        return self._state is _State.CLOSED  # a call: it may change across an await

    async def prepare(self) -> None:
        """Read the environment and load the certificates now, if not done yet (the first
        request does it otherwise); cancelling the wait abandons a load that blocks."""
        await self._ensure_open()

    async def _ensure_open(self) -> None:
        if self._session is not None or self._state is _State.CLOSED:
            return
        # One task reads the environment; the others wait for it. A batch's first wave is
        # hundreds of requests at once, and each would load the certificates otherwise.
        while self._trust_env and self._ssl is None and not self._closed():
            if self._loading is not None:
                await self._loading.wait()
                continue  # loaded; or the loader failed or was cancelled: try in its place
            self._loading = loading = anyio.Event()
            try:
                # aiohttp's own default context is made when aiohttp is imported, so it misses
                # an SSL_CERT_FILE set later; OpenSSL reads the variables when this one is made.
                # In a daemon thread: loading the system's certificates blocks for tens of
                # ms. Abandoned on cancel: a certificate file whose open blocks (a FIFO, a hung
                # network mount) must not keep a deadline or Ctrl-C from taking effect.
                context = await load_default_context()
                self._ssl = self._ssl or context
                # Read here once: aiohttp's trust_env reads the environment and ~/.netrc again
                # in a worker thread for every request (two thread hops each).
                self._proxies = urllib.request.getproxies_environment()
            finally:
                self._loading = None
                loading.set()

    def _proxy(self, url: str) -> str | None:
        if not self._proxies:
            return None
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        if origin not in self._proxy_of:
            proxy = self._proxies.get(parts.scheme)
            if proxy is not None and _no_proxy(parts.netloc, self._proxies):
                proxy = None
            self._proxy_of[origin] = proxy
        return self._proxy_of[origin]

    def _open(self) -> aiohttp.ClientSession:
        if self._state is _State.CLOSED:
            raise RuntimeError("this transport is closed; create a new client")
        if self._session is None:
            context: ssl.SSLContext | bool = self._ssl or True
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=context),
                timeout=self._default_timeout,
                headers={"User-Agent": self._user_agent},
                raise_for_status=False,
            )
            self._state = _State.OPENED
        return self._session

    async def aclose(self) -> None:
        """Close the session; harmless to call twice. A body still being read (a status
        stream in another task) fails at once with :class:`TransportError`."""
        session, self._session = self._session, None
        self._state = _State.CLOSED
        for chunks in list(self._streams):
            chunks.interrupt()
        if session is not None:
            await session.close()

    def _send(self, request: Request) -> Any:
        timeout = self._default_timeout
        if request.read_timeout is not None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self._timeouts.connect, sock_read=request.read_timeout
            )
        return self._open().request(
            request.method,
            request.url,
            params=request.params,
            headers=request.headers,
            json=request.json,
            data=request.data,
            allow_redirects=request.follow_redirects,
            timeout=timeout,
            proxy=self._proxy(request.url),
        )

    async def request(self, request: Request) -> Response:
        """Send ``request`` and read the whole answer."""
        await self._ensure_open()
        closed_before = self._closed()  # then _open() refuses it: a RuntimeError, as it says
        try:
            return await _mapped(request.url, self._read(request))
        except RuntimeError as exc:
            # aiohttp's read of a body whose connection aclose() took meanwhile (between the
            # headers and the body): a lost answer, as any connection failure, never a bug.
            if closed_before or not self._closed():
                raise
            msg = f"connection failed: the transport was closed ({exc})"
            error = TransportError(msg, url=request.url)
        raise error

    async def _read(self, request: Request) -> Response:
        async with self._send(request) as resp:
            limit = request.max_body
            if limit is None:
                body = await resp.read()
            else:
                length = _content_length(resp.headers)
                if length is not None and length > limit:
                    raise body_too_large(request)
                buffer = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    buffer += chunk
                    if len(buffer) > limit:
                        raise body_too_large(request)
                body = bytes(buffer)
            return Response(status=resp.status, headers=resp.headers, body=body, url=request.url)

    def stream(self, request: Request) -> _AiohttpStream:
        """Send ``request``; read the body inside the block, through ``aiter_bytes()``."""
        return _AiohttpStream(self, request)


class _AiohttpStream:
    """The ``async with`` of :meth:`AiohttpTransport.stream` (a class: a generator-based
    context manager and an exit stack cost more calls than the read of a status event)."""

    __slots__ = ("_chunks", "_opened", "_request", "_transport")

    def __init__(self, transport: AiohttpTransport, request: Request) -> None:
        self._transport = transport
        self._request = request
        self._opened: Any = None
        self._chunks: _ReadChunks | None = None

    async def __aenter__(self) -> StreamResponse:
        transport, request = self._transport, self._request
        await transport._ensure_open()
        opened = transport._send(request)
        resp = await _mapped(request.url, opened.__aenter__())
        self._opened = opened  # entered: exited on the way out, whatever happens
        chunks = self._chunks = _ReadChunks(resp.content, request.url)
        transport._streams.add(chunks)
        if transport._closed():
            # Closed while the headers came in: aclose() interrupted the bodies it knew of,
            # not this one, and aiohttp would fail its read with a bare RuntimeError.
            chunks.interrupt()
        return StreamResponse(
            status=resp.status, headers=resp.headers, url=request.url, chunks=chunks
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        chunks, opened = self._chunks, self._opened
        self._chunks = self._opened = None
        if chunks is not None:
            chunks.close()
            self._transport._streams.discard(chunks)
        if opened is not None:
            await opened.__aexit__(exc_type, exc, tb)


class _Chunks:
    """A body as chunks, refused once its ``stream()`` block ended (a class: nothing to
    finalise). Every transport here reads through one, so a late read fails the same way."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            msg = "connection failed: the body was read after its stream() block ended"
            raise TransportError(msg, url=self._url)
        chunk = await self._next()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def _next(self) -> bytes:
        raise NotImplementedError


class _ReadChunks(_Chunks):
    """An aiohttp body, its read failures mapped."""

    def __init__(self, content: aiohttp.StreamReader, url: str) -> None:
        super().__init__(url)
        self._content = content

    async def __anext__(self) -> bytes:
        # _Chunks.__anext__ and _mapped inlined: this runs for every chunk of every body.
        if self._closed:
            return await super().__anext__()  # raises
        try:
            chunk = await self._content.read(_CHUNK)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            error = _transport_error(self._url, exc)
        else:
            if not chunk:
                raise StopAsyncIteration
            return chunk
        raise error  # outside the except block, as in _mapped

    async def _next(self) -> bytes:
        return await _mapped(self._url, self._content.read(_CHUNK))

    def interrupt(self) -> None:
        # aiohttp's session close detaches a connection from the body being read before it
        # is lost, so a pending read would wait for the next bytes forever (or sock_read).
        self._content.set_exception(aiohttp.ClientConnectionError("the transport was closed"))


async def _mapped(url: str, step: Awaitable[T]) -> T:
    """Await one of the transport's own steps (a connect, a read), its aiohttp or socket
    failure translated to :class:`TransportError`; never around the caller's code.

    The error is raised outside the ``except`` block, so nothing chains it to aiohttp's
    (neither ``__cause__`` nor ``__context__``): that one holds the request's headers, the
    key among them, and shows them in its repr. Its type and message are kept in the text.
    """
    try:
        return await step
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        error = _transport_error(url, exc)
    except ValueError as exc:  # aiohttp refusing the request itself (a URL it cannot use)
        error = TransportError(f"request refused: ValueError: {exc}", url=url, sent=True)
    raise error


def _transport_error(url: str, exc: BaseException) -> TransportError:
    # Only a failed connect proves the request never left: that is what makes a retry safe.
    not_sent = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    kind = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
    return TransportError(f"{kind}: {type(exc).__name__}: {exc}", url=url, sent=not not_sent)


#: Answers one request: a plain or async function returning a :class:`Response`.
Handler: TypeAlias = Callable[[Request], "Response | Awaitable[Response]"]


class MockTransport:
    """A transport that answers every request by calling ``handler`` (as httpx's does).

    Streamed answers deliver the handler's body in ``chunk_size`` pieces. A handler may
    raise :class:`TransportError` to play a network failure.
    """

    def __init__(self, handler: Handler, *, chunk_size: int | None = None) -> None:
        self._handler = handler
        self._chunk_size = chunk_size

    async def request(self, request: Request) -> Response:
        """Answer ``request`` with the handler's response.

        A streamed body (``data`` an async iterable, as for an upload) is read first, as a
        real transport sends it, so the handler sees bytes.
        """
        if request.data is not None and not isinstance(request.data, bytes):
            body = b"".join([bytes(chunk) async for chunk in request.data])
            request = attrs.evolve(request, data=body)
        answer = self._handler(request)
        resp = await answer if inspect.isawaitable(answer) else answer
        if request.max_body is not None and len(resp.body) > request.max_body:
            raise body_too_large(request)
        return resp

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[StreamResponse]:
        """The handler's response, its body delivered in chunks (readable inside the block)."""
        resp = await self.request(request)
        chunks = _MockChunks(resp.body, self._chunk_size, request.url)
        try:
            yield StreamResponse(
                status=resp.status, headers=resp.headers, url=request.url, chunks=chunks
            )
        finally:
            chunks.close()

    async def aclose(self) -> None:
        """Nothing to release."""


class _MockChunks(_Chunks):
    def __init__(self, body: bytes, size: int | None, url: str) -> None:
        super().__init__(url)
        size = size or len(body) or 1
        self._pieces = iter([body[i : i + size] for i in range(0, len(body), size)])

    async def _next(self) -> bytes:
        return next(self._pieces, b"")
