"""Webhook records in a ledger, for every backend: a ``WebhookSink`` and what reads it.

One row per request id (fal delivers repeats; the first one kept wins), with the batch item
and attempt its URL's tag named. Recording wakes the batch item of this process waiting on
that job (or on that item and attempt, for a submit whose answer was lost), so a receiver
sharing the ledger object with the batch ends a webhook-tracked job at once; a receiver in
another process is found by the waiting item's next ledger read. The tags' secret and the
batch's name are kept in the ledger's meta table, made once.
"""

from __future__ import annotations

import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from ..._webhook_models import WebhookEvent, WebhookTag

__all__ = ["WEBHOOK_COLUMNS", "WebhookRecords", "webhook_event", "webhook_row"]

WEBHOOK_COLUMNS = (
    "request_id",
    "batch",
    "item",
    "attempt",
    "user_id",
    "timestamp",
    "status",
    "payload",
    "error",
    "payload_error",
    "gateway_request_id",
    "received_at",
)


def webhook_row(event: WebhookEvent) -> dict[str, Any]:
    """The columns of ``event``'s row."""
    tag = event.tag
    return {
        "request_id": event.request_id,
        "batch": tag.batch if tag else None,
        "item": tag.item if tag else None,
        "attempt": tag.attempt if tag else None,
        "user_id": event.user_id,
        "timestamp": event.timestamp,
        "status": event.status,
        "payload": None if event.payload is None else json.dumps(event.payload),
        "error": event.error,
        "payload_error": event.payload_error,
        "gateway_request_id": event.gateway_request_id,
        "received_at": time.time(),
    }


def webhook_event(row: Mapping[str, Any]) -> WebhookEvent:
    """A row read back as the event it was made from."""
    tag = None
    if row["item"] is not None and row["batch"] is not None and row["attempt"] is not None:
        tag = WebhookTag(batch=row["batch"], item=row["item"], attempt=int(row["attempt"]))
    return WebhookEvent(
        request_id=row["request_id"],
        gateway_request_id=row["gateway_request_id"],
        user_id=row["user_id"],
        timestamp=int(row["timestamp"]),
        status=row["status"],
        payload=json.loads(row["payload"]) if row["payload"] else None,
        error=row["error"],
        payload_error=row["payload_error"],
        tag=tag,
    )


def _tag_name(item: str, attempt: int) -> str:
    return f"tag\n{item}\n{attempt}"  # never a request id: those hold no newline


class WebhookRecords(ABC):
    """The webhook methods of a ledger, over four primitives its backend provides."""

    #: Waiters of this process, by request id or by tag (created on first use).
    _webhook_waiters: dict[str, anyio.Event]

    @abstractmethod
    async def _insert_webhook(self, row: dict[str, Any]) -> bool:
        """Insert the row unless its request id has one; True when inserted (durably)."""

    @abstractmethod
    async def _webhook_rows(
        self, *, request_id: str | None = None, tag: tuple[str, int] | None = None
    ) -> list[Mapping[str, Any]]:
        """The rows of a request id, of a tag's (item, attempt), or all, oldest first."""

    @abstractmethod
    async def _meta_value(self, name: str, make: Callable[[], str]) -> str:
        """The meta value ``name``, made (durably, once, whoever asks first) when missing."""

    def _waiters(self) -> dict[str, anyio.Event]:
        try:
            return self._webhook_waiters
        except AttributeError:
            self._webhook_waiters = {}
            return self._webhook_waiters

    async def batch_id(self) -> str:
        """This ledger's name in its jobs' webhook tags."""
        return await self._meta_value("batch_id", lambda: secrets.token_hex(8))

    async def webhook_secret(self) -> bytes:
        """The secret the tags of this ledger's webhook URLs are signed with."""
        return bytes.fromhex(await self._meta_value("webhook_secret", _new_secret))

    async def record_webhook(self, event: WebhookEvent) -> bool:
        """Keep a verified event; True when it was new (one row per request id, however often
        fal delivers it). Wakes the batch item of this process waiting on it."""
        new = await self._insert_webhook(webhook_row(event))
        names = [event.request_id]
        if event.tag is not None:
            names.append(_tag_name(event.tag.item, event.tag.attempt))
        for name in names:
            if (waiter := self._waiters().pop(name, None)) is not None:
                waiter.set()
        return new

    def webhook_waiter(self, request_id: str) -> anyio.Event:
        """An event set when this process records a webhook for ``request_id`` (take it
        before reading the ledger, then wait: no delivery falls between the two)."""
        return self._waiters().setdefault(request_id, anyio.Event())

    def tag_waiter(self, item: str, attempt: int) -> anyio.Event:
        """Likewise for a webhook tagged with this item and attempt (a lost answer's job)."""
        return self._waiters().setdefault(_tag_name(item, attempt), anyio.Event())

    async def webhook(self, request_id: str) -> WebhookEvent | None:
        """The recorded event of ``request_id``, if any."""
        rows = await self._webhook_rows(request_id=request_id)
        return webhook_event(rows[0]) if rows else None

    async def tagged_webhooks(self, item: str, attempt: int) -> list[WebhookEvent]:
        """The recorded events whose URL's tag named this item and attempt."""
        return [webhook_event(r) for r in await self._webhook_rows(tag=(item, attempt))]

    async def webhooks(self) -> list[WebhookEvent]:
        """Every recorded event, oldest first."""
        return [webhook_event(r) for r in await self._webhook_rows()]


def _new_secret() -> str:
    return secrets.token_hex(32)
