"""Progress events of a batch, for a console display, a log, or a journal.

Each is a small frozen record naming the item by its ``key``. A batch calls its ``on_event``
callback with them in order per item; an async callback is awaited before the item moves on,
which is how a journal records a request id before anything else happens to the job.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from .._exceptions import FalEditError
from .._models import CancelOutcome, DownloadedFile, LogEntry

__all__ = [
    "BatchEvent",
    "ItemCompleted",
    "ItemDownloaded",
    "ItemFailed",
    "ItemInterrupted",
    "ItemLog",
    "ItemQueued",
    "ItemReattached",
    "ItemStarted",
    "ItemSubmitted",
]


@attrs.frozen(kw_only=True)
class ItemSubmitted:
    """fal accepted the item's job; ``attempt`` counts job-level retries from 1."""

    key: str
    request_id: str
    attempt: int = 1


@attrs.frozen(kw_only=True)
class ItemReattached:
    """A job an earlier run submitted (read from the journal) is followed again: it is in
    flight, though this run paid nothing to submit it."""

    key: str
    request_id: str
    attempt: int = 1


@attrs.frozen(kw_only=True)
class ItemQueued:
    """The job waits in fal's queue with ``position`` requests ahead (None: fal did not say)."""

    key: str
    request_id: str
    position: int | None


@attrs.frozen(kw_only=True)
class ItemStarted:
    """A runner started the job."""

    key: str
    request_id: str


@attrs.frozen(kw_only=True)
class ItemLog:
    """The model emitted a log line for the job."""

    key: str
    request_id: str
    entry: LogEntry


@attrs.frozen(kw_only=True)
class ItemCompleted:
    """The job finished on fal and its output is known (downloads may follow)."""

    key: str
    request_id: str


@attrs.frozen(kw_only=True)
class ItemDownloaded:
    """Every output of the item is on disk and verified."""

    key: str
    request_id: str
    files: tuple[DownloadedFile, ...]


@attrs.frozen(kw_only=True)
class ItemFailed:
    """The item failed; ``request_id`` is set when a job was submitted for it."""

    key: str
    request_id: str | None
    error: FalEditError


@attrs.frozen(kw_only=True)
class ItemInterrupted:
    """The batch was left early with the item's job in flight, and asked fal to cancel it.

    ``cancel`` is fal's answer: ``REQUESTED`` (or ``OK``) when fal took the cancel (a running
    job may still finish), ``ALREADY_COMPLETED`` when the job had finished, None when fal did
    not answer in time. Unless fal reports the job cancelled, a journaled batch re-attaches
    to it on its next run.
    """

    key: str
    request_id: str
    cancel: CancelOutcome | None


#: Any progress event.
BatchEvent: TypeAlias = (
    ItemSubmitted
    | ItemReattached
    | ItemQueued
    | ItemStarted
    | ItemLog
    | ItemCompleted
    | ItemDownloaded
    | ItemFailed
    | ItemInterrupted
)
