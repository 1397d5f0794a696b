"""Reconciling lost submits: the policy, each row's fate, and the report (values only).

A submit whose answer was lost (a reset after the POST, fal's own 5xx, a crash before the
ledger commit) leaves an ``unknown`` row: fal may have queued, and will then bill, that job.
``_batch/_reconcile`` decides what became of it, from evidence only, in this order:

1. a webhook record tagged with the row's item and attempt names its job (``resolved``);
2. fal still answers for the job an error answer named (``resolved``);
3. exactly one request in fal's history has the exact body that was sent (``adopted``);
   two or more (``ambiguous``: reported, never submitted again); but while another row that
   sent the same body has no settled job (it is ``submitting``, or ``unknown`` and not in
   this pass), a match may be its job: the row stays ``unknown`` for a later pass;
4. no match in a *complete* walk of the history made after the start-timeout bound
   (``sent_at + start_timeout + longest_run + settle``): nothing billable can exist, so the
   item may be submitted again (``resubmittable``), unless the policy is strict;
5. anything else stays ``unknown``: an incomplete walk, a walk before the bound, a row that
   recorded no body or no start timeout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import attrs

__all__ = ["ReconcilePolicy", "ReconcileReport", "Reconciled", "Resolution"]


def _seconds(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"ReconcilePolicy.{attribute.name} must be seconds, got {value!r}")
    if not (0 <= value < math.inf):
        raise ValueError(f"ReconcilePolicy.{attribute.name} must be finite seconds >= 0")


def _start_timeout(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _seconds(_, attribute, value)
    if value <= 1:  # fal's clients refuse 1 s and below
        raise ValueError("ReconcilePolicy.start_timeout must be above 1 second")


@attrs.frozen(kw_only=True)
class ReconcilePolicy:
    """How lost submits are reconciled, and the start timeout that makes that possible.

    A journaled batch sends ``start_timeout`` with every submit (unless the submit options
    set their own): fal then either starts a job within it or ends it unbilled. So once
    ``sent_at + start_timeout + longest_run + settle`` has passed, a complete history walk
    that finds no job with the sent body proves none exists. ``settle`` must cover how long
    fal takes to list a request in its history (undocumented) and clock skew; ``skew`` is
    how far before ``sent_at`` the history is searched. ``strict`` never submits an unknown
    item again, whatever the evidence. ``ledger_poll`` is how often a webhook-tracked job
    reads the ledger for its webhook when no receiver in this process wakes it.

    Usage::

        ReconcilePolicy(start_timeout=120, longest_run=300, settle=60)
    """

    start_timeout: float = attrs.field(default=300.0, validator=_start_timeout)
    longest_run: float = attrs.field(default=600.0, validator=_seconds)
    settle: float = attrs.field(default=120.0, validator=_seconds)
    skew: float = attrs.field(default=60.0, validator=_seconds)
    strict: bool = False
    ledger_poll: float = attrs.field(default=30.0, validator=_seconds)

    def bound(self, sent_at: float, start_timeout: float) -> float:
        """When a job sent at ``sent_at`` (with that start timeout) has surely ended."""
        return sent_at + start_timeout + self.longest_run + self.settle


class Resolution(StrEnum):
    """What reconciling one ``unknown`` row concluded."""

    #: Its webhook record, or fal itself, names its job: followed from there.
    RESOLVED = "resolved"
    #: One request in fal's history has exactly the body sent: that job is the item's.
    ADOPTED = "adopted"
    #: A complete walk after the bound found no such job: it may be submitted again.
    RESUBMITTABLE = "resubmittable"
    #: Two or more jobs have the body sent: reported, never submitted again.
    AMBIGUOUS = "ambiguous"
    #: Not provable yet (or the policy is strict): it stays unknown.
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True)
class Reconciled:
    """One row's fate: the job it was given (``request_id``), the jobs that made it
    ambiguous (``candidates``), why it stays unknown (``reason``) and, for a row that may
    become resubmittable, from when (``bound``, unix seconds)."""

    key: str
    resolution: Resolution
    request_id: str | None = None
    candidates: tuple[str, ...] = ()
    reason: str | None = None
    bound: float | None = None


@attrs.frozen(kw_only=True)
class ReconcileReport:
    """What one reconcile pass over a ledger did, row by row.

    Usage::

        report = await client.reconcile("batch.journal")
        print(report.counts)  # {Resolution.ADOPTED: 3, Resolution.UNKNOWN: 1, ...}
    """

    rows: tuple[Reconciled, ...] = ()
    #: Requests of the history the walk read (0 when no walk was needed).
    history_seen: int = 0
    #: The walk read every page and every input: "no match" proves something.
    history_complete: bool = True

    @property
    def counts(self) -> Mapping[Resolution, int]:
        """Rows by resolution (every resolution present, zero or not)."""
        counts = dict.fromkeys(Resolution, 0)
        for row in self.rows:
            counts[row.resolution] += 1
        return counts

    def of(self, resolution: Resolution) -> tuple[Reconciled, ...]:
        """The rows that ended with ``resolution``."""
        return tuple(r for r in self.rows if r.resolution is resolution)

    @property
    def next_bound(self) -> float | None:
        """The earliest bound of a row still unknown only because it came too soon."""
        bounds = [r.bound for r in self.of(Resolution.UNKNOWN) if r.bound is not None]
        return min(bounds, default=None)
