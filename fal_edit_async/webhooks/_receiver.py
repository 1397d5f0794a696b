"""An aiohttp application that receives fal's webhooks: verify, de-duplicate, hand over.

fal retries a delivery up to 10 times over 2 hours, and may deliver one twice, so the
receiver remembers the request ids it has handed over: a repeat is answered 200 (fal stops
retrying) and handed over no second time. A delivery that fails verification is answered
4xx, counted by reason, and recorded nowhere; one the callback or the sink failed to take
is answered 500 and not remembered, so fal's retry is taken.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import attrs
from aiohttp import web

from .._exceptions import WebhookError, WebhookPayloadError
from .._webhook_models import WebhookEvent, read_tag
from ._jwks import JwksCache
from ._verify import (
    DEFAULT_MAX_BODY,
    DEFAULT_TOLERANCE,
    WebhookKeys,
    check_headers,
    check_signature,
    parse_event,
)

__all__ = ["STATISTICS", "ReceiverStatistics", "WebhookSink", "create_app"]

#: What the callback receives: one verified, new event.
OnEvent = Callable[[WebhookEvent], Awaitable[None]]


class WebhookSink(Protocol):
    """Where verified events are kept durably: a batch :class:`~fal_edit_async.Journal`."""

    async def record_webhook(self, event: WebhookEvent) -> bool:
        """Keep ``event``; True when it was new, False when this request id was kept before."""
        ...

    async def webhook_secret(self) -> bytes:
        """The secret the batch signs its webhook URLs' tags with."""
        ...


@attrs.define
class ReceiverStatistics:
    """What a receiver has seen: deliveries, events handed over, repeats, and refusals."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    #: Refused deliveries, by the name of the error (``WebhookTimestampError``...).
    rejected: Counter[str] = attrs.field(factory=Counter)
    #: Deliveries the callback or the sink failed on (answered 500, to be retried by fal).
    failures: int = 0


#: The app key holding a receiver's :class:`ReceiverStatistics`.
STATISTICS = web.AppKey("fal_edit_async_webhook_statistics", ReceiverStatistics)


class _Receiver:
    def __init__(
        self,
        jwks: JwksCache | WebhookKeys,
        on_event: OnEvent | None,
        sink: WebhookSink | None,
        tolerance: float,
        max_body: int,
        tag_secret: bytes | None,
        remember: int,
    ) -> None:
        self.jwks, self.on_event, self.sink = jwks, on_event, sink
        self.tolerance, self.max_body = tolerance, max_body
        self.tag_secret = tag_secret
        self.remember = remember
        self.stats = ReceiverStatistics()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._busy: dict[str, anyio.Event] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.stats.received += 1
        try:
            event = await self._verified(request)
        except WebhookError as exc:
            self.stats.rejected[type(exc).__name__] += 1
            return web.json_response({"detail": str(exc)}, status=exc.http_status)
        while (busy := self._busy.get(event.request_id)) is not None:
            await busy.wait()  # the same delivery, twice at once: the second waits its turn
        if event.request_id in self._seen:
            self.stats.duplicates += 1
            return web.json_response({"ok": True, "duplicate": True})
        self._busy[event.request_id] = done = anyio.Event()
        try:
            new = await self._hand_over(event)
        except Exception as exc:  # the user's callback, or the sink: fal will retry
            self.stats.failures += 1
            detail = f"the delivery could not be kept ({type(exc).__name__})"
            return web.json_response({"detail": detail}, status=500)
        finally:
            del self._busy[event.request_id]
            done.set()
        self._remember(event.request_id)
        if not new:
            self.stats.duplicates += 1
            return web.json_response({"ok": True, "duplicate": True})
        self.stats.accepted += 1
        return web.json_response({"ok": True})

    async def _verified(self, request: web.Request) -> WebhookEvent:
        # Anyone may POST here: the checks that need no body come before reading it, so an
        # unsigned (or stale) delivery cannot make the receiver hold up to max_body for it.
        self._check_size(request)
        check_headers(request.headers, tolerance=self.tolerance)
        body = await self._body(request)
        secret = self.tag_secret
        if secret is None and self.sink is not None:
            secret = self.tag_secret = await self.sink.webhook_secret()
        tag = read_tag(request.query, secret)
        if isinstance(self.jwks, JwksCache):
            return await self.jwks.verify(
                request.headers, body, tolerance=self.tolerance, max_body=self.max_body, tag=tag
            )
        found = check_signature(
            request.headers, body, self.jwks, tolerance=self.tolerance, max_body=self.max_body
        )
        return parse_event(body, *found, tag=tag)

    def _too_large(self) -> WebhookPayloadError:
        return WebhookPayloadError(
            f"the body is larger than {self.max_body} bytes", http_status=413
        )

    def _check_size(self, request: web.Request) -> None:
        if (request.content_length or 0) > self.max_body:
            raise self._too_large()

    async def _body(self, request: web.Request) -> bytes:
        """The raw body, refused (413) as soon as it is known to be too large."""
        chunks, size = [], 0
        while chunk := await request.content.read(65536):
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    async def _hand_over(self, event: WebhookEvent) -> bool:
        new = True
        if self.sink is not None:
            new = await self.sink.record_webhook(event)
        if new and self.on_event is not None:
            await self.on_event(event)
        return new

    def _remember(self, request_id: str) -> None:
        self._seen[request_id] = None
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)  # the sink, if any, still knows it


def create_app(
    *,
    jwks: JwksCache | WebhookKeys,
    on_event: OnEvent | None = None,
    sink: WebhookSink | None = None,
    path: str = "/",
    tolerance: float = DEFAULT_TOLERANCE,
    max_body: int = DEFAULT_MAX_BODY,
    tag_secret: bytes | None = None,
    remember: int = 100_000,
) -> web.Application:
    """An aiohttp application that receives fal's webhooks on ``POST path``.

    Each delivery is verified (:func:`verify`), then handed over once per request id: to
    ``sink.record_webhook`` (a batch journal, which also wakes the batch waiting on that
    job), then to ``on_event``. Its :class:`ReceiverStatistics` is ``app[STATISTICS]``.

    Args:
        jwks: a :class:`JwksCache` (fal's keys, fetched and cached) or fixed keys.
        on_event: awaited with each new event; if it raises, the delivery is answered 500.
        sink: where events are kept durably (a :class:`~fal_edit_async.Journal`).
        path: the path deliveries are POSTed to.
        tolerance: seconds a delivery's signed timestamp may be from now.
        max_body: the largest body accepted (413 above it).
        tag_secret: the secret of batch tags in the URL (default: the sink's).
        remember: request ids kept in memory to answer repeats (the sink keeps them all).

    Usage::

        jwks = JwksCache()
        app = create_app(jwks=jwks, on_event=handle_event)
        web.run_app(app, port=8080)
    """
    receiver = _Receiver(jwks, on_event, sink, tolerance, max_body, tag_secret, remember)
    app = web.Application(client_max_size=max_body + 1)
    app[STATISTICS] = receiver.stats
    app.router.add_post(path, receiver.handle)
    return app
