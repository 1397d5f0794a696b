"""fal's request history, walked: find the job a lost submit answer would have named.

fal's queue has no idempotency key, so a submit whose answer was lost (a reset after the
POST, fal's own 5xx, a crash before the journal commit) can only be found afterwards, in
``GET {api_url}/v1/models/requests/by-endpoint?expand=payloads``: by an exact ``json_input``
match among requests sent in ``[sent_at - skew, now)``, every page walked.

A walk that is not provably complete is never read as "no such job": a page that is not
JSON, a ``has_more`` without a cursor, a cursor seen before (a loop), a request listed
without its payloads (``X-Fal-Store-IO: 0``, or a history that drops them), or a failed GET
all make the search ``complete=False``, and a caller must not resubmit on it. Items of other
endpoints or outside the window are skipped; an item listed twice counts once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from ._core import Core
from ._exceptions import FalEditError, ProtocolError
from ._protocol import api_error
from ._retry import with_retries

__all__ = ["HISTORY_PATH", "HistoryItem", "HistorySearch", "find_submits", "walk_history"]

HISTORY_PATH = "/v1/models/requests/by-endpoint"
#: fal allows at most 100 items a page.
PAGE_LIMIT = 100
_MAX_PAGES = 100_000


@attrs.frozen(kw_only=True)
class HistoryItem:
    """One request in fal's history."""

    request_id: str
    endpoint_id: str
    sent_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    status_code: int | None = None
    #: The stored payloads (``expand=payloads``); None when fal did not store them.
    json_input: Any = attrs.field(default=None, hash=False)
    json_output: Any = attrs.field(default=None, hash=False)


@attrs.frozen(kw_only=True)
class HistorySearch:
    """What a search of the history found, and whether the walk proves anything.

    ``complete`` is True only when every page was read and well formed and every request in
    the window had its input stored: only then does "no match" mean no such job exists
    (as far as fal has indexed, see the lag).
    """

    matches: tuple[HistoryItem, ...]
    complete: bool
    #: Requests of the endpoint in the window that the walk read.
    seen: int
    reason: str | None = None


def _when(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"history item {field} is not a timestamp", payload=value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError(f"history item {field} is not a timestamp", payload=value) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _item(raw: object) -> HistoryItem:
    if not isinstance(raw, Mapping):
        raise ProtocolError("a history item is not an object", payload=raw)
    request_id, endpoint_id = raw.get("request_id"), raw.get("endpoint_id")
    if not isinstance(request_id, str) or not isinstance(endpoint_id, str):
        raise ProtocolError("a history item has no request_id or endpoint_id", payload=raw)
    sent_at = _when(raw.get("sent_at"), "sent_at")
    if sent_at is None:
        raise ProtocolError("a history item has no sent_at", payload=raw)
    code = raw.get("status_code")
    return HistoryItem(
        request_id=request_id,
        endpoint_id=endpoint_id,
        sent_at=sent_at,
        started_at=_when(raw.get("started_at"), "started_at"),
        ended_at=_when(raw.get("ended_at"), "ended_at"),
        status_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        json_input=raw.get("json_input"),
        json_output=raw.get("json_output"),
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def _page(core: Core, params: dict[str, str]) -> Mapping[str, Any]:
    url = core.config.api_url + HISTORY_PATH

    async def once() -> Mapping[str, Any]:
        resp = await core.request("GET", url, params=params)
        if not resp.ok:
            raise api_error(resp.status, resp.headers, resp.body)
        body = resp.json("request history")
        if not isinstance(body, Mapping) or not isinstance(body.get("items"), list):
            raise ProtocolError("the request history page has no items list", payload=body)
        return body

    return await with_retries(once, policy=core.config.retry, stats=core.stats)


async def walk_history(
    core: Core,
    endpoint_id: str,
    *,
    start: datetime,
    end: datetime | None = None,
    payloads: bool = True,
) -> AsyncIterator[HistoryItem]:
    """Every request of ``endpoint_id`` sent in ``[start, end)``, every page, each once.

    Raises:
        ProtocolError: a page is malformed, loops, or claims more without a cursor.
        APIError, TransportError: a page could not be read (after retries).
    """
    params = {"endpoint_id": endpoint_id, "start": _iso(start), "limit": str(PAGE_LIMIT)}
    if end is not None:
        params["end"] = _iso(end)
    if payloads:
        params["expand"] = "payloads"
    cursors: set[str] = set()
    seen: set[str] = set()
    for _ in range(_MAX_PAGES):
        body = await _page(core, params)
        for raw in body["items"]:
            item = _item(raw)
            in_window = start <= item.sent_at and (end is None or item.sent_at < end)
            if item.endpoint_id != endpoint_id or not in_window or item.request_id in seen:
                continue  # a page that lies about what it lists: skip, never trust
            seen.add(item.request_id)
            yield item
        if body.get("has_more") is not True:
            return
        cursor = body.get("next_cursor")
        if not isinstance(cursor, str) or not cursor:
            raise ProtocolError("the history says it has more, but gives no cursor", payload=body)
        if cursor in cursors:
            raise ProtocolError("the history's cursor loops back to a page already read")
        cursors.add(cursor)
        params["cursor"] = cursor
    raise ProtocolError(f"the history walk passed {_MAX_PAGES} pages")


async def find_submits(
    core: Core,
    endpoint_id: str,
    json_input: Any,
    *,
    sent_at: datetime,
    skew: timedelta = timedelta(seconds=60),
) -> HistorySearch:
    """The requests whose stored input is exactly ``json_input``, sent from
    ``sent_at - skew`` until now; never raises for what fal answered (``complete=False``)."""
    matches: list[HistoryItem] = []
    unreadable = 0
    seen = 0
    try:
        async for item in walk_history(core, endpoint_id, start=sent_at - skew):
            seen += 1
            if item.json_input is None:
                unreadable += 1
            elif item.json_input == json_input:
                matches.append(item)
    except FalEditError as exc:
        return HistorySearch(matches=tuple(matches), complete=False, seen=seen, reason=str(exc))
    if unreadable:
        reason = f"{unreadable} request(s) in the window were listed without their input"
        return HistorySearch(matches=tuple(matches), complete=False, seen=seen, reason=reason)
    return HistorySearch(matches=tuple(matches), complete=True, seen=seen)
