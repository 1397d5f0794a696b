"""How the emulator plays fal where fal is less tidy than its documentation.

By default the emulator answers the way fal's documentation describes. :data:`FAL_PROFILE`
(and :meth:`Emulator.fal_like`) turns on what the official clients, third-party code and
observation show the live service doing, so a client tested here meets no surprise there.
Each switch is recorded, with its evidence, in ``docs/fidelity.md``.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = ["FAL_PROFILE", "Profile", "is_loopback_url", "sloppy_log", "sloppy_status"]


@attrs.frozen(kw_only=True)
class Profile:
    """Switches for fal's untidy ways; the defaults are the documented behaviour.

    Args:
        stream_status: the HTTP status of a status stream opened before the job completed
            (fal's status endpoint answers 202 while a job runs; the official clients take
            any 2xx).
        sloppy_payloads: status payloads as fal sends them at times: log lines with
            ``message: null`` and numeric timestamps, ``metrics: null``, ``queue_position:
            null`` on polls and missing from stream events (but for the head of the queue).
        separate_rest: the REST storage API on an origin of its own (``rest.fal.ai`` is
            not ``queue.fal.run``); the queue origin then answers 404 for it.
        rate_limit_retry_after: a 429 carries ``Retry-After``. fal's carry
            ``X-Fal-Needs-Retry: 1`` and no delay.
        refuse_loopback_inputs: an input image URL on a loopback address fails the job
            (fal cannot reach your machine); the emulator's own CDN still works.
        unknown_id_completed: an unknown request id answers status 200 COMPLETED (and a
            single COMPLETED event on the stream), its result 404, as seen live.
        cancel_detail: a cancel of a completed job answers 400 ``{"detail": ...}`` (seen
            live) rather than ``{"status": "ALREADY_COMPLETED"}``.
        require_key: only the emulator's own key is accepted, generated when none was given.
    """

    stream_status: int = attrs.field(default=200)
    sloppy_payloads: bool = False
    separate_rest: bool = False
    rate_limit_retry_after: bool = True
    refuse_loopback_inputs: bool = False
    unknown_id_completed: bool = False
    cancel_detail: bool = False
    require_key: bool = False

    @stream_status.validator
    def _check(self, _: attrs.Attribute[int], value: int) -> None:
        if not 200 <= value < 300:
            raise ValueError(f"stream_status must be a 2xx status, got {value!r}")


#: What the live service does, as far as it is known (docs/fidelity.md).
FAL_PROFILE = Profile(
    stream_status=202,
    sloppy_payloads=True,
    separate_rest=True,
    rate_limit_retry_after=False,
    refuse_loopback_inputs=True,
    unknown_id_completed=True,
    cancel_detail=True,
    require_key=True,
)


def sloppy_log(entry: dict[str, Any], index: int) -> dict[str, Any]:
    """Log line ``index`` of a job as fal sends it at times: a numeric timestamp (Unix
    seconds, not ISO 8601), and every third line without its message."""
    out = dict(entry)
    out["timestamp"] = time.time()
    if index % 3 == 2:
        out["message"] = None
    return out


def sloppy_status(payload: dict[str, Any], *, streamed: bool) -> dict[str, Any]:
    """A status payload with fal's untidy fields (see :attr:`Profile.sloppy_payloads`; log
    lines are stored untidy, by :func:`sloppy_log`)."""
    out = dict(payload)
    if out.get("status") == "IN_QUEUE" and out.get("queue_position"):
        if streamed:
            del out["queue_position"]
        else:
            out["queue_position"] = None
    if out.get("status") == "COMPLETED":
        out["metrics"] = None
    return out


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL whose host is a loopback address or ``localhost``."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
