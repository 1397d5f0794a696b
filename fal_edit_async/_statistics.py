"""What a client did, counted: typed fields instead of hand-spelt string keys.

:class:`ClientStatistics` is the public, frozen snapshot (``AsyncClient.statistics()``);
:class:`Counters` is the mutable tally the client's operations increment. Both list the same
fields, so a misspelt counter is an ``AttributeError`` at once (the class is slotted) and a
mypy error before that.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

__all__ = ["ClientStatistics", "Counters", "RetryCounts", "RetryKind"]

#: The kind of a retried failure: what ``on_retry`` hears and ``RetryCounts`` counts.
RetryKind: TypeAlias = Literal[
    "rate_limit", "server_error", "transport", "timeout", "not_ready", "download", "upload"
]


@attrs.frozen(kw_only=True)
class RetryCounts:
    """Retried requests by kind of failure."""

    rate_limit: int = 0
    server_error: int = 0
    transport: int = 0
    timeout: int = 0
    not_ready: int = 0  #: a result asked for before fal's result store had it
    download: int = 0
    upload: int = 0

    @property
    def total(self) -> int:
        """Every retry, whatever its kind."""
        return sum(attrs.astuple(self))

    def as_dict(self) -> dict[str, int]:
        """The kinds that were retried at least once, with their counts."""
        return {k: v for k, v in attrs.asdict(self).items() if v}

    def since(self, earlier: RetryCounts) -> RetryCounts:
        """The retries counted after ``earlier`` was taken."""
        now, then = attrs.asdict(self), attrs.asdict(earlier)
        return RetryCounts(**{k: now[k] - then[k] for k in now})


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of one client's counters, for reports, dashboards and tests.

    Usage::

        stats = client.statistics()
        print(stats.requests, stats.retries.rate_limit)
    """

    requests: int = 0  #: HTTP requests sent, of every kind
    submits: int = 0  #: jobs fal accepted
    cancels_sent: int = 0
    status_polls: int = 0
    streams_opened: int = 0  #: status streams (server-sent events) opened
    stream_drops: int = 0  #: streams that ended before the job completed
    stream_errors: int = 0  #: streams that failed with a transient error
    stream_refused: int = 0  #: jobs whose stream was refused, so they were polled
    polling_fallbacks: int = 0  #: jobs that fell back from the stream to polling
    uploads: int = 0
    upload_dedup: int = 0  #: uploads saved because the same content was uploaded already
    inlined: int = 0  #: local images sent inline as data URIs
    downloads: int = 0
    retries: RetryCounts = RetryCounts()


@attrs.define(kw_only=True, slots=True)
class Counters:
    """The mutable tally behind :class:`ClientStatistics` (same fields, plus retries by kind)."""

    requests: int = 0
    submits: int = 0
    cancels_sent: int = 0
    status_polls: int = 0
    streams_opened: int = 0
    stream_drops: int = 0
    stream_errors: int = 0
    stream_refused: int = 0
    polling_fallbacks: int = 0
    uploads: int = 0
    upload_dedup: int = 0
    inlined: int = 0
    downloads: int = 0
    _retries: dict[RetryKind, int] = attrs.field(factory=dict)

    def retried(self, kind: RetryKind) -> None:
        """Count one retry of ``kind``."""
        self._retries[kind] = self._retries.get(kind, 0) + 1

    def snapshot(self) -> ClientStatistics:
        """The counts now, frozen."""
        values = attrs.asdict(self, recurse=False)
        values.pop("_retries")
        return ClientStatistics(**values, retries=RetryCounts(**self._retries))
