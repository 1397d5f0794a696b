"""Reconcile lost submits: what became of each ``unknown`` row, from evidence only.

:func:`decide` is the rule (pure, see ``_reconcile_models`` for the order); :func:`gather`
collects the evidence for many rows at once: the webhook records the ledger holds, one status
GET per job an error answer named, and one walk of fal's request history for all the rows
of an endpoint (from the earliest ``sent_at - skew``), keeping only requests whose input is
exactly a body one of the rows sent. The ledger side (reading the rows, writing the fates)
is the caller's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from .._core import Core
from .._exceptions import FalEditError, InputError, NotFoundError
from .._history import HistoryItem, walk_history
from .._job import attach
from .._reconcile_models import Reconciled, ReconcilePolicy, Resolution
from .._webhook_models import WebhookEvent
from ._ledger._states import canonical_body

__all__ = ["Evidence", "LostSubmit", "decide", "gather"]


def _digest(body: Any) -> str:
    return hashlib.sha256(canonical_body(body).encode()).hexdigest()


@attrs.frozen(kw_only=True)
class LostSubmit:
    """An ``unknown`` row, as reconciling needs it."""

    key: str
    endpoint: str
    #: The attempt whose answer was lost (what its webhook tag carries).
    attempt: int
    #: When the submit was sent (unix seconds), and the start timeout it carried.
    sent_at: float | None
    start_timeout: float | None
    #: The body exactly as sent (decoded JSON); None when the row never recorded it.
    body: Any = attrs.field(default=None, hash=False)
    #: The job fal's error answer named, if any.
    request_id: str | None = None
    #: Jobs of this item's earlier attempts: never this attempt's.
    past_ids: frozenset[str] = frozenset()


@attrs.frozen(kw_only=True)
class Evidence:
    """What is known about one lost submit."""

    #: Webhook records tagged with the row's item and attempt.
    webhooks: tuple[WebhookEvent, ...] = ()
    #: fal answered for the job an error answer named.
    named_alive: bool = False
    #: History requests with exactly the sent body, not owned by another row or attempt.
    matches: tuple[HistoryItem, ...] = ()
    #: The walk read every page, with every input of the row's window.
    complete: bool = False
    #: When the walk began (unix seconds): what the bound is compared with.
    walked_at: float | None = None
    reason: str | None = None
    #: Other rows that sent exactly this body and whose job is not settled (``submitting``,
    #: or ``unknown`` outside this pass): a match may be theirs, so none is adopted.
    contested: tuple[str, ...] = ()


def decide(row: LostSubmit, evidence: Evidence, policy: ReconcilePolicy) -> Reconciled:
    """One row's fate, in the order of ``_reconcile_models``: never resubmittable on an
    incomplete walk, before the bound, with two jobs in sight, or under a strict policy."""
    key = row.key
    tagged = sorted({e.request_id for e in evidence.webhooks})
    if len(tagged) == 1:
        return Reconciled(key=key, resolution=Resolution.RESOLVED, request_id=tagged[0])
    if len(tagged) > 1:
        reason = "several jobs' webhooks name this item and attempt"
        return Reconciled(
            key=key, resolution=Resolution.AMBIGUOUS, candidates=tuple(tagged), reason=reason
        )
    if evidence.named_alive and row.request_id is not None:
        return Reconciled(key=key, resolution=Resolution.RESOLVED, request_id=row.request_id)

    def unknown(reason: str, bound: float | None = None) -> Reconciled:
        return Reconciled(key=key, resolution=Resolution.UNKNOWN, reason=reason, bound=bound)

    found = sorted({m.request_id for m in evidence.matches})
    if found and evidence.contested:
        # A live worker may be about to record one of these jobs as its own row's: neither
        # adopted nor ambiguous (that is for ever); a later pass sees whose it became.
        others = ", ".join(evidence.contested)
        return unknown(f"{others} sent this body too and not settled yet: the job may be theirs")
    if len(found) == 1:
        return Reconciled(key=key, resolution=Resolution.ADOPTED, request_id=found[0])
    if len(found) > 1:
        reason = f"{len(found)} jobs in fal's history have exactly this body"
        return Reconciled(
            key=key, resolution=Resolution.AMBIGUOUS, candidates=tuple(found), reason=reason
        )

    if row.body is None or row.sent_at is None:
        return unknown("the ledger holds no sent body for this submit: it cannot be searched")
    if not evidence.complete or evidence.walked_at is None:
        return unknown(f"the history walk was incomplete: {evidence.reason or 'not made'}")
    if row.start_timeout is None:
        return unknown("no start timeout was sent, so no walk can prove there is no job")
    bound = policy.bound(row.sent_at, row.start_timeout)
    if evidence.walked_at < bound:
        return unknown("too soon: the job may still start, or not be listed yet", bound)
    if policy.strict:
        return unknown("no job found, but the strict policy never submits an item again")
    return Reconciled(key=key, resolution=Resolution.RESUBMITTABLE)


async def gather(
    core: Core,
    rows: Sequence[LostSubmit],
    *,
    owners: Mapping[str, str],
    webhooks: Iterable[WebhookEvent],
    policy: ReconcilePolicy,
) -> tuple[list[Evidence], int, bool]:
    """The evidence for each row (in order), the history requests read, and whether every
    walk was complete.

    ``owners`` maps each request id the ledger holds to its row's key: a job another row
    holds is never this row's.
    """
    by_tag: dict[tuple[str, int], list[WebhookEvent]] = {}
    for event in webhooks:
        if event.tag is not None:
            by_tag.setdefault((event.tag.item, event.tag.attempt), []).append(event)
    evidence = [Evidence(webhooks=tuple(by_tag.get((row.key, row.attempt), ()))) for row in rows]
    for i, row in enumerate(rows):
        if not evidence[i].webhooks and row.request_id is not None:
            alive = await _alive(core, row)
            evidence[i] = attrs.evolve(evidence[i], named_alive=alive)
    seen, complete = 0, True
    endpoints = sorted({r.endpoint for i, r in enumerate(rows) if _searched(r, evidence[i])})
    for endpoint in endpoints:
        picked = [
            i for i, r in enumerate(rows) if r.endpoint == endpoint and _searched(r, evidence[i])
        ]
        walk = await _walk(core, endpoint, [rows[i] for i in picked], policy)
        seen += walk.seen
        for i in picked:
            evidence[i] = walk.evidence_for(rows[i], evidence[i], owners)
            complete = complete and evidence[i].complete
    return evidence, seen, complete


def _searched(row: LostSubmit, evidence: Evidence) -> bool:
    """Rows the history must be walked for: no webhook or live job settled them, and the
    row has a body to look for."""
    settled = bool(evidence.webhooks) or evidence.named_alive
    return not settled and row.body is not None and row.sent_at is not None


async def _alive(core: Core, row: LostSubmit) -> bool:
    assert row.request_id is not None
    try:
        handle = attach(core, row.request_id, row.endpoint)
        await handle.status()
    except (NotFoundError, InputError):
        return False
    except FalEditError:
        return False  # not provably alive; the history may still find it
    return True


@attrs.define
class _Walk:
    """One walk's harvest: requests with a wanted body, and those read without input."""

    walked_at: float
    skew: float
    seen: int = 0
    reason: str | None = None
    matches: dict[str, list[HistoryItem]] = attrs.field(factory=dict)
    #: sent_at of each request listed without its input (they may be any row's).
    blind: list[datetime] = attrs.field(factory=list)

    def evidence_for(
        self, row: LostSubmit, evidence: Evidence, owners: Mapping[str, str]
    ) -> Evidence:
        assert row.sent_at is not None
        start = _moment(row.sent_at) - timedelta(seconds=self.skew)
        ours = [
            m
            for m in self.matches.get(_digest(row.body), ())
            if m.sent_at >= start
            and m.json_input == row.body  # the digest found it; equality decides
            and owners.get(m.request_id, row.key) == row.key
            and m.request_id not in row.past_ids
        ]
        blind = sum(1 for moment in self.blind if moment >= start)
        reason = self.reason
        if reason is None and blind:
            reason = f"{blind} request(s) in the window were listed without their input"
        return attrs.evolve(
            evidence,
            matches=tuple(ours),
            complete=reason is None,
            walked_at=self.walked_at,
            reason=reason,
        )


async def _walk(
    core: Core, endpoint: str, rows: Sequence[LostSubmit], policy: ReconcilePolicy
) -> _Walk:
    wanted = {_digest(r.body) for r in rows}
    earliest = min(r.sent_at for r in rows if r.sent_at is not None)
    walk = _Walk(walked_at=time.time(), skew=policy.skew)
    start = _moment(earliest) - timedelta(seconds=policy.skew)
    try:
        async for item in walk_history(core, endpoint, start=start):
            walk.seen += 1
            if item.json_input is None:
                walk.blind.append(item.sent_at)
                continue
            digest = _digest(item.json_input)
            if digest in wanted:
                walk.matches.setdefault(digest, []).append(item)
    except FalEditError as exc:
        walk.reason = str(exc)
    return walk


def _moment(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, tz=UTC)
