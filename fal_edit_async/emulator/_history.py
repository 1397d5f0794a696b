"""fal's request history: ``GET /v1/models/requests/by-endpoint`` on the REST origin.

Query: ``endpoint_id`` (required), ``start`` and ``end`` (ISO 8601 or unix seconds; ``end``
exclusive, default now), ``status`` (``success`` or ``error``), ``expand=payloads`` (adds
``json_input`` and ``json_output``), ``limit`` (1 to 100, default 50) and ``cursor``.
Answer: ``{items, next_cursor, has_more}``, newest ``sent_at`` first, each item
``{request_id, endpoint_id, started_at, sent_at, ended_at, status_code, duration}``.

Unforgiving where fal is unclear: a request appears only ``lag`` seconds after it was sent
(fal does not document how soon; ``Emulator(history_lag=...)``), the cursor is a keyset
position, so a request that appears late behind a walk's cursor is not on that walk's later
pages, and a submit sent with ``X-Fal-Store-IO: 0`` has ``null`` payloads. Scheduled hostile
pages (route ``history``): ``history_loop`` (``next_cursor`` is the cursor just used),
``history_no_cursor`` (``has_more`` without a cursor), ``history_no_payloads`` (payloads
``null``), ``history_foreign`` (an item of another endpoint, outside the window).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from ._faults import Fault
from ._state import EmulatedJob, JobState

__all__ = ["HISTORY_PATH", "HistoryIndex", "history_answer"]

HISTORY_PATH = "/v1/models/requests/by-endpoint"
_MAX_LIMIT = 100


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    moment = _EPOCH + timedelta(microseconds=round(stamp * 1e6))
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(value: str) -> float:
    """ISO 8601 (``Z`` or an offset) or unix seconds, to whole microseconds; ValueError."""
    try:
        seconds = float(value)
    except ValueError:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment - _EPOCH) // timedelta(microseconds=1) / 1e6
    if not math.isfinite(seconds):
        raise ValueError(value)
    return round(seconds * 1e6) / 1e6


class HistoryIndex:
    """Every submitted job with its wall-clock send time, as the history endpoint lists them.

    Args:
        lag: seconds after its submit before a request appears.
    """

    def __init__(self, lag: float = 0.0) -> None:
        self.lag = lag
        self._sent: list[tuple[float, EmulatedJob]] = []
        self.pages_served = 0

    def record(self, job: EmulatedJob) -> None:
        """Note a job at the moment it was queued."""
        # Whole microseconds, as listed: a listed sent_at given back as ``start`` finds it.
        self._sent.append((round(time.time() * 1e6) / 1e6, job))

    def _wall(self, sent: float, job: EmulatedJob, mono: float | None) -> float | None:
        return None if mono is None else sent + (mono - job.submitted_at)

    def item(self, sent: float, job: EmulatedJob, payloads: bool) -> dict[str, Any]:
        """One history item."""
        started = self._wall(sent, job, job.started_at)
        ended = self._wall(sent, job, job.completed_at)
        done = job.state is JobState.COMPLETED
        item: dict[str, Any] = {
            "request_id": job.request_id,
            "endpoint_id": job.endpoint_id,
            "started_at": _iso(started),
            "sent_at": _iso(sent),
            "ended_at": _iso(ended),
            "status_code": job.result_status if done else None,
            "duration": None if started is None or ended is None else round(ended - started, 6),
        }
        if payloads:
            stored = job.headers.get("X-Fal-Store-IO", "1") != "0"
            item["json_input"] = job.input if stored else None
            item["json_output"] = job.result_body if stored and done else None
        return item

    def visible(
        self, endpoint_id: str, start: float, end: float, status: str | None
    ) -> list[tuple[float, EmulatedJob]]:
        """The jobs a query sees now, newest first."""
        shown_before = time.time() - self.lag
        found = [
            (sent, job)
            for sent, job in self._sent
            if job.endpoint_id == endpoint_id and start <= sent < end and sent <= shown_before
        ]
        if status == "success":
            found = [(s, j) for s, j in found if j.result_status == 200]
        elif status == "error":
            found = [(s, j) for s, j in found if j.result_status not in (None, 200)]
        found.sort(key=lambda pair: (pair[0], pair[1].request_id), reverse=True)
        return found


def _cursor(sent: float, request_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([sent, request_id]).encode()).decode()


def _position(cursor: str) -> tuple[float, str]:
    try:
        sent, request_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("invalid cursor") from None
    if not isinstance(sent, int | float) or not isinstance(request_id, str):
        raise ValueError("invalid cursor")
    return float(sent), request_id


def history_answer(
    index: HistoryIndex, request: web.Request, hostile: Fault | None
) -> tuple[int, dict[str, Any]]:
    """The (status, body) answering one history query."""
    query = request.query
    endpoint_id = query.get("endpoint_id")
    if not endpoint_id:
        return 422, _field_error("endpoint_id", "Field required")
    try:
        start = _time(query["start"]) if "start" in query else 0.0
        end = _time(query["end"]) if "end" in query else time.time()
    except ValueError:
        return 422, _field_error("start", "Input should be a valid datetime")
    limit_text = query.get("limit", "50")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_LIMIT:
        return 422, _field_error("limit", f"Input should be from 1 to {_MAX_LIMIT}")
    status = query.get("status")
    if status not in (None, "success", "error"):
        return 422, _field_error("status", "Input should be 'success' or 'error'")
    found = index.visible(endpoint_id, start, end, status)
    cursor = query.get("cursor")
    if cursor:
        try:
            after = _position(cursor)
        except ValueError:
            return 400, {"detail": "Invalid cursor"}
        found = [(s, j) for s, j in found if (s, j.request_id) < after]
    limit = int(limit_text)
    page, more = found[:limit], len(found) > limit
    payloads = query.get("expand") == "payloads"
    kind = hostile.kind if hostile is not None else None
    items = [index.item(s, j, payloads and kind != "history_no_payloads") for s, j in page]
    if kind == "history_no_payloads" and payloads:
        for item in items:
            item["json_input"] = item["json_output"] = None
    if kind == "history_foreign":
        items.append(
            {
                **(items[0] if items else {}),
                "request_id": "foreign",
                "endpoint_id": endpoint_id + "-other",
                "sent_at": _iso(start - 3600),
            }
        )
    next_cursor = _cursor(page[-1][0], page[-1][1].request_id) if more and page else None
    if kind == "history_loop":
        more, next_cursor = True, cursor or _cursor(math.inf, "")
    elif kind == "history_no_cursor":
        more, next_cursor = True, None
    index.pages_served += 1
    return 200, {"items": items, "next_cursor": next_cursor, "has_more": more}


def _field_error(field: str, msg: str) -> dict[str, Any]:
    return {"detail": [{"loc": ["query", field], "msg": msg, "type": "value_error"}]}
