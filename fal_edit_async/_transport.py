"""HTTP over one aiohttp session: the only module that sees aiohttp's exceptions.

It decides where the key goes: ``Authorization`` is added per request, and only when the URL
is on the configured queue or REST origin. Redirects are never followed for API calls, so a
3xx cannot carry the key to another host; downloads (``open_stream(auth=False)``) follow
redirects but never carry the key at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any

import aiohttp
import anyio
import attrs
from multidict import CIMultiDictProxy

from ._config import ClientConfig
from ._exceptions import TransportError
from ._protocol import api_error, decode_json, same_origin

__all__ = ["HttpResponse", "HttpTransport"]


class _State(Enum):
    UNOPENED = 1  # no session yet; the first request or __aenter__ creates it
    OPENED = 2  # a live session
    CLOSED = 3  # closed for good; any further use is a bug


@attrs.frozen
class HttpResponse:
    """A fully read answer."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def json(self, what: str) -> Any:
        """The body as JSON, or ProtocolError."""
        return decode_json(self.body, what=what)

    def raise_for_status(self) -> None:
        """Raise the typed APIError for a non-2xx status."""
        if not self.ok:
            raise api_error(self.status, self.headers, self.body)


class HttpTransport:
    """Owns one ``aiohttp.ClientSession`` and maps its failures to :class:`TransportError`."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._state = _State.UNOPENED
        self._auth_bases = (config.queue_url, config.rest_url)
        self.requests_sent = 0

    def _open(self) -> aiohttp.ClientSession:
        if self._state is _State.CLOSED:
            raise RuntimeError("this client is closed; create a new one")
        if self._session is None:
            t = self._config.timeouts
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.limits.max_connections),
                # No total: a status stream or a big download may rightly take long.
                timeout=aiohttp.ClientTimeout(total=None, connect=t.connect, sock_read=t.read),
                headers={"User-Agent": self._config.user_agent},
                raise_for_status=False,
            )
            self._state = _State.OPENED
        return self._session

    async def aclose(self) -> None:
        """Close the session; harmless to call twice."""
        session, self._session = self._session, None
        self._state = _State.CLOSED
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    def scrub(self, body: bytes) -> bytes:
        """``body`` with the key blanked out, should a server quote it back in an answer.

        Error bodies end up in exception messages, logs and journals; the key must not.
        """
        creds = self._config.credentials
        key = creds.key.encode() if creds is not None else b""
        return body.replace(key, b"<redacted>") if key and key in body else body

    def may_authorize(self, url: str) -> bool:
        """True when ``url`` is on an origin the key may be sent to."""
        return any(same_origin(url, base) for base in self._auth_bases)

    def _headers(self, url: str, extra: Mapping[str, str] | None, auth: bool) -> dict[str, str]:
        headers = dict(extra or {})
        creds = self._config.credentials
        if auth and creds is not None and self.may_authorize(url):
            headers["Authorization"] = creds.header_value
        return headers

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
    ) -> HttpResponse:
        """Send one request and read the whole answer (never follows redirects).

        ``auth=False`` never sends the key, even to a fal origin (a presigned upload URL).
        """
        session = self._open()
        self.requests_sent += 1
        with _mapped_errors(url):
            async with session.request(
                method,
                url,
                json=json,
                data=data,
                params=params,
                headers=self._headers(url, headers, auth=auth),
                allow_redirects=False,
            ) as resp:
                body = self.scrub(await resp.read())
                return HttpResponse(status=resp.status, headers=resp.headers, body=body, url=url)

    @asynccontextmanager
    async def open_stream(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        read_timeout: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET a response whose body the caller reads incrementally; closed on exit.

        With ``auth=False`` (downloads) redirects are followed, since no key travels.
        """
        session = self._open()
        self.requests_sent += 1
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._config.timeouts.connect,
            sock_read=read_timeout or self._config.timeouts.read,
        )
        with _mapped_errors(url):
            async with session.get(
                url,
                params=params,
                headers=self._headers(url, headers, auth=auth),
                allow_redirects=not auth,
                timeout=timeout,
            ) as resp:
                yield resp


class _mapped_errors:
    """Translate aiohttp and socket failures at this one boundary."""

    def __init__(self, url: str) -> None:
        self._url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, _: type[BaseException] | None, exc: BaseException | None, __: Any) -> None:
        # Not every OSError: a disk error while writing a download is not a network failure.
        if exc is None or not isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError):
            return
        # Only a failed connect proves the request never left: that is what makes a retry safe.
        not_sent = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
        kind = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
        raise TransportError(
            f"{kind}: {type(exc).__name__}: {exc}", url=self._url, sent=not not_sent
        ) from exc
