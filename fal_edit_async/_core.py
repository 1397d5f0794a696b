"""The core every operation shares: configuration, a transport, counters, and the key policy.

Job handles, batches, uploads, downloads and status streams take a :class:`Core`, never the
client. The core decides where the key goes (``Authorization`` only on the configured queue
and REST origins, and never on a request made with ``auth=False``) and blanks the key out of
every answer before anyone reads it, so both hold for any :class:`Transport`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio

from ._config import ClientConfig
from ._exceptions import APIError, TransportError
from ._protocol import api_error, same_origin
from ._statistics import Counters
from ._transport import Request, Response, StreamResponse, Transport

__all__ = ["Core"]

_REDACTED = b"<redacted>"


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
        self._auth_bases = (config.queue_url, config.rest_url)
        creds = config.credentials
        self._key = creds.key.encode() if creds is not None else b""
        self._authorization = creds.header_value if creds is not None else None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran."""
        return self._closed

    async def aclose(self) -> None:
        """Close the transport (shielded: a cancelled caller still releases its sockets)."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self.transport.aclose()

    def may_authorize(self, url: str) -> bool:
        """True when ``url`` is on an origin the key may be sent to."""
        return any(same_origin(url, base) for base in self._auth_bases)

    def scrub(self, body: bytes) -> bytes:
        """``body`` with the key blanked out, should a server quote it back in an answer.

        Error bodies end up in exception messages, logs and journals; the key must not.
        """
        key = self._key
        return body.replace(key, _REDACTED) if key and key in body else body

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        auth: bool,
        **fields: Any,
    ) -> Request:
        if self._closed:
            raise RuntimeError("this client is closed; create a new one")
        out = dict(headers or {})
        if auth and self._authorization is not None and self.may_authorize(url):
            out["Authorization"] = self._authorization
        return Request(method=method, url=url, headers=out, **fields)

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Count the request sent inside: answered, or failed after it left (a reset).

        A request the transport refused locally (a header aiohttp rejects) or whose
        connection never opened was not sent, so ``statistics().requests`` leaves it out.
        """
        try:
            yield
        except TransportError as exc:
            self.stats.requests += exc.sent
            raise
        self.stats.requests += 1

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
    ) -> Response:
        """Send one request and read the whole answer (never follows redirects).

        ``auth=False`` never sends the key, even to a fal origin (a presigned upload URL).
        """
        request = self._request(
            method, url, headers=headers, auth=auth, json=json, params=params, data=data
        )
        with self._counted():
            resp = await self.transport.request(request)
        body = self.scrub(resp.body)
        if body is resp.body:
            return resp
        return Response(status=resp.status, headers=resp.headers, body=body, url=resp.url)

    @asynccontextmanager
    async def stream(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        read_timeout: float | None = None,
    ) -> AsyncIterator[StreamResponse]:
        """GET a response whose body is read inside the block.

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
        async with AsyncExitStack() as stack:
            with self._counted():
                resp = await stack.enter_async_context(self.transport.stream(request))
            yield resp

    async def error_of(self, resp: StreamResponse) -> APIError:
        """The typed error for a streamed non-2xx answer, its body read and scrubbed."""
        return api_error(resp.status, resp.headers, self.scrub(await resp.read()))
