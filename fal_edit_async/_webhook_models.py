"""Webhook values: a verified delivery, and the tag a batch puts on each job's webhook URL.

Pure values and functions (no I/O): ``fal_edit_async.webhooks`` verifies deliveries and
builds :class:`WebhookEvent` values; the batch ledger records them.

A batch gives each job a webhook URL carrying its batch, item key and attempt
(:func:`tag_url`). The URL is not covered by fal's signature, so the tag carries an HMAC of
its own, keyed by a secret only the batch knows: a genuine delivery replayed onto another
item's URL is not taken for that item's (:func:`read_tag` drops such a tag).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

__all__ = ["TAG_PARAMS", "WebhookEvent", "WebhookTag", "read_tag", "tag_url"]

#: The query parameters a batch adds to its webhook URL.
TAG_PARAMS = ("fal_batch", "fal_item", "fal_attempt", "fal_tag")
_SIG_HEX = 32  # 128 bits of HMAC-SHA256: enough against guessing, short in a URL


@attrs.frozen(kw_only=True)
class WebhookTag:
    """Which batch item (and which attempt of it) a job's webhook URL was made for."""

    batch: str
    item: str
    attempt: int


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """One verified webhook delivery: fal's signed answer at the end of a job.

    ``status`` is ``"OK"`` for a job whose result was HTTP 200 and ``"ERROR"`` otherwise
    (kept as sent, should fal add another); ``payload`` is the result body (the model's
    output, or its error body), ``None`` with ``payload_error`` when fal could not send it.
    ``tag`` is the batch item the URL named, when its HMAC checked out.
    """

    request_id: str
    gateway_request_id: str | None
    user_id: str
    timestamp: int
    status: str
    payload: Any = attrs.field(default=None, hash=False)
    error: str | None = None
    payload_error: str | None = None
    tag: WebhookTag | None = None

    @property
    def ok(self) -> bool:
        """True when the job succeeded (fal's ``status`` is ``OK``) and sent its output."""
        return self.status == "OK" and self.payload is not None


def _signature(secret: bytes, batch: str, item: str, attempt: int) -> str:
    message = f"{batch}\n{item}\n{attempt}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:_SIG_HEX]


def tag_url(base: str, tag: WebhookTag, secret: bytes) -> str:
    """``base`` with the tag's query parameters added (any of ours already there replaced)."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k not in TAG_PARAMS]
    query += [
        ("fal_batch", tag.batch),
        ("fal_item", tag.item),
        ("fal_attempt", str(tag.attempt)),
        ("fal_tag", _signature(secret, tag.batch, tag.item, tag.attempt)),
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _is_ascii_int(text: str) -> bool:
    # str.isdigit() is true for "²", which int() refuses: ASCII digits only.
    return text.isascii() and text.isdigit()


def read_tag(query: Mapping[str, str], secret: bytes | None) -> WebhookTag | None:
    """The tag of a delivery's URL, or None: untagged, no secret to check it, or forged."""
    batch, item = query.get("fal_batch"), query.get("fal_item")
    attempt, sig = query.get("fal_attempt", ""), query.get("fal_tag", "")
    if secret is None or batch is None or item is None or not _is_ascii_int(attempt):
        return None
    if not hmac.compare_digest(_signature(secret, batch, item, int(attempt)), sig):
        return None
    return WebhookTag(batch=batch, item=item, attempt=int(attempt))
