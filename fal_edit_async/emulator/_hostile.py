"""A hostile server: answers that are valid HTTP but test a client's defences.

Each behaviour is scheduled on a route with ``Emulator.schedule_fault`` (never drawn at random,
see ``HOSTILE_KINDS``). This module only rewrites answers; the applications decide when.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aiohttp import web

from ._faults import ERROR_TYPES, Fault
from ._http import json_response

__all__ = [
    "HOSTILE_FILE_NAMES",
    "INVALID_JSON",
    "UNKNOWN_STATUS",
    "SseFraming",
    "early_answer",
    "foreign_urls",
    "request_error",
    "result_body",
    "send_oversized",
    "status_payload",
]

#: A body that starts like JSON and is not.
INVALID_JSON = b'{"status": "IN_PROGRESS", "logs": [{"message": '
#: The status value no client knows.
UNKNOWN_STATUS = "PAUSED_FOR_MAINTENANCE"
#: ``file_name`` values that would escape a folder if a client used them as paths.
HOSTILE_FILE_NAMES = (
    "../../escape.png",
    "/tmp/absolute.png",
    "a\x00b.png",
    "..\\..\\windows.png",
    "....//deep/../x.png",
)
_EXTRA_FIELDS = {"x_future_field": {"nested": [1, 2, 3]}, "eta_seconds": 1.5}
_JUNK = 1024 * 1024


#: fal's answers for an account that cannot pay (fal's errors page documents 402; the 403
#: was seen live).
ACCOUNT_ANSWERS = {
    "payment_required": (402, "Payment required: add credit to your account"),
    "user_locked": (403, "User is locked. Reason: Exhausted balance"),
}


def early_answer(fault: Fault, request: web.Request) -> web.Response | None:
    """The whole answer for ``redirect``, ``echo_key``, ``payment_required``, ``user_locked``
    and ``request_error``; None for the other kinds."""
    if fault.kind == "request_error":
        return request_error(fault)
    if fault.kind == "redirect":
        assert fault.location is not None
        return web.Response(status=302, headers={"Location": fault.location}, text="Found")
    if fault.kind in ACCOUNT_ANSWERS:
        status, detail = ACCOUNT_ANSWERS[fault.kind]
        body = json.dumps({"detail": detail}).encode()
        return web.Response(status=status, body=body, content_type="application/json")
    if fault.kind == "echo_key":
        detail = f"Invalid credentials: {request.headers.get('Authorization', '')}"
        body = json.dumps({"detail": detail}).encode()
        return web.Response(status=401, body=body, content_type="application/json")
    return None


def request_error(fault: Fault) -> web.Response:
    """fal's request error for ``fault.error_type`` (its status unless ``fault.status``
    says another), or a bare ``fault.status`` (499 by default) with nothing in it."""
    if fault.error_type in ERROR_TYPES:
        status, detail, _ = ERROR_TYPES[fault.error_type]
        body = {"detail": detail, "error_type": fault.error_type}
        return json_response(
            fault.status or status, body, None, {"X-Fal-Error-Type": fault.error_type}
        )
    return web.Response(status=fault.status or 499)


def foreign_urls(answer: dict[str, Any], location: str) -> dict[str, Any]:
    """A submit answer whose job URLs all live on ``location``'s origin."""
    base = f"{location.rstrip('/')}/requests/{answer['request_id']}"
    return answer | {
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
    }


def status_payload(payload: dict[str, Any], kind: str) -> dict[str, Any]:
    """A status object with an unknown status value, or with fields no client knows."""
    if kind == "unknown_status":
        return {key: value for key, value in payload.items() if key != "logs"} | {
            "status": UNKNOWN_STATUS
        }
    if kind == "unknown_fields":
        out = payload | _EXTRA_FIELDS
        if isinstance(out.get("logs"), list):
            out["logs"] = [entry | {"labels": {"stage": "x"}} for entry in out["logs"]]
        return out
    return payload


def result_body(body: Any, kind: str, status: int) -> Any:
    """A successful result with no images, too many, hostile names or unknown fields."""
    if status != 200 or not isinstance(body, dict):
        return body
    images: list[dict[str, Any]] = copy.deepcopy(body.get("images", []))
    if kind == "zero_images":
        images = []
    elif kind == "extra_images":
        images = images * 3
    elif kind == "hostile_names":
        for n, image in enumerate(images):
            image["file_name"] = HOSTILE_FILE_NAMES[n % len(HOSTILE_FILE_NAMES)]
    elif kind == "unknown_fields":
        images = [image | {"blurhash": "LEHV6nWB2y", "nsfw": False} for image in images]
        return body | {"images": images, "seed": 42, "timings": {"inference": 1.2}}
    return body | {"images": images}


class SseFraming:
    """How a hostile status stream frames its events.

    Args:
        kind: ``sse_split`` (1-3 byte pieces), ``sse_crlf`` (CRLF line endings),
            ``sse_noise`` (comments, ``event:``, ``id:``, ``retry:``, an unknown field and
            the JSON spread over several ``data:`` lines), ``sse_hostile`` (all three), or a
            payload kind (``invalid_json``, ``unknown_status``, ``unknown_fields``).
    """

    def __init__(self, kind: str | None) -> None:
        every = kind == "sse_hostile"
        self.kind = kind
        self.split = every or kind == "sse_split"
        self.crlf = every or kind == "sse_crlf"
        self.noise = every or kind == "sse_noise"
        self._sent = 0

    def first_events(self) -> list[bytes]:
        """Events to send before the real first one."""
        if self.kind == "invalid_json":
            return [b"data: " + INVALID_JSON + b"\n\n"]
        return []

    def payload(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The payloads to send for one real status (an unknown status goes first, once)."""
        if self.kind == "unknown_fields":
            return [status_payload(payload, "unknown_fields")]
        if self.kind == "unknown_status" and self._sent == 0:
            return [status_payload(payload, "unknown_status"), payload]
        return [payload]

    def event(self, payload: dict[str, Any]) -> bytes:
        """One event, framed."""
        self._sent += 1
        if not self.noise:
            text = "data: " + json.dumps(payload) + "\n\n"
        else:
            data = "".join(f"data: {line}\n" for line in json.dumps(payload, indent=1).split("\n"))
            text = (
                ": a comment the client must skip\n"
                "event: status\n"
                f"id: {self._sent}\n"
                "retry: 3000\n"
                "x-unknown-field: ignored\n"
                f"{data}\n"
                ": keep-alive\n\n"
            )
        if self.crlf:
            text = text.replace("\n", "\r\n")
        return text.encode()

    def pieces(self, event: bytes) -> list[bytes]:
        """The writes one event is sent in: 1-3 bytes each when splitting."""
        if not self.split:
            return [event]
        out, at, size = [], 0, 1
        while at < len(event):
            out.append(event[at : at + size])
            at += size
            size = size % 3 + 1
        return out


async def send_oversized(
    request: web.Request, data: bytes, content_type: str
) -> web.StreamResponse:
    """The file, then 1 MiB of junk, chunked so no Content-Length warns the client."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(data)
        for _ in range(_JUNK // 65536):
            await response.write(b"\0" * 65536)
        await response.write_eof()
    except ConnectionError:  # the client stopped reading, as it should
        pass
    return response
