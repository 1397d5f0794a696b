"""One reconcile pass over a ledger: decide every ``unknown`` row and write its fate.

Run by a batch when it opens its journal (before anything is submitted), and by
``AsyncClient.reconcile`` (``fal-edit reconcile JOURNAL``). What each fate writes:

- resolved or adopted: the row becomes ``submitted`` with that job (a resume follows it), or
  ``completed`` with the job's output when the webhook carried it, or when fal's queue has
  forgotten the job and its history still holds the output (``json_output``);
- resubmittable: ``unsent`` (provably no job), so the batch submits it;
- ambiguous: ``ambiguous`` with the candidate jobs, never submitted again;
- unknown: unchanged.
"""

from __future__ import annotations

import attrs

from .._converter import parse
from .._core import Core
from .._endpoint import DEFAULT_ENDPOINT, EndpointId
from .._exceptions import FalEditError, ProtocolError, UnknownSubmitError
from .._history import HistoryItem
from .._job import attach
from .._models import EditImageOutput, JobUrls
from .._protocol import job_urls
from .._reconcile_models import Reconciled, ReconcilePolicy, ReconcileReport, Resolution
from .._webhook_models import WebhookEvent
from ._ledger import JournalBackend, JournalEntry, JournalState
from ._reconcile import Evidence, LostSubmit, decide, gather

__all__ = ["reconcile_journal"]


def _lost(entry: JournalEntry) -> LostSubmit:
    return LostSubmit(
        key=entry.key,
        endpoint=entry.endpoint or DEFAULT_ENDPOINT,
        attempt=entry.attempts,
        sent_at=entry.sent_at,
        start_timeout=entry.start_timeout,
        body=entry.sent_body,
        request_id=entry.request_id,
        past_ids=frozenset(entry.past_ids),
    )


async def reconcile_journal(
    core: Core, journal: JournalBackend, policy: ReconcilePolicy
) -> ReconcileReport:
    """Decide every ``unknown`` row of ``journal`` and record each fate (see the module)."""
    entries = await journal.entries()
    lost = [e for e in entries if e.state is JournalState.UNKNOWN]
    if not lost:
        return ReconcileReport()
    owners: dict[str, str] = {}
    for e in entries:
        for request_id in (*e.past_ids, *((e.request_id,) if e.request_id else ())):
            owners[request_id] = e.key
    rows = [_lost(e) for e in lost]
    events = await journal.webhooks()
    found, seen, complete = await gather(core, rows, owners=owners, webhooks=events, policy=policy)
    taken: set[str] = set()  # one job is one item's, even for repeats of one input
    decided: list[Reconciled] = []
    for entry, row, evidence in zip(lost, rows, found, strict=True):
        evidence = _untaken(evidence, taken)
        fate = decide(row, evidence, policy)
        if fate.request_id is not None:
            taken.add(fate.request_id)
        await _record(core, journal, entry, fate, evidence)
        decided.append(fate)
    return ReconcileReport(rows=tuple(decided), history_seen=seen, history_complete=complete)


def _untaken(evidence: Evidence, taken: set[str]) -> Evidence:
    if not taken:
        return evidence
    return attrs.evolve(
        evidence,
        webhooks=tuple(e for e in evidence.webhooks if e.request_id not in taken),
        matches=tuple(m for m in evidence.matches if m.request_id not in taken),
    )


async def _record(
    core: Core, journal: JournalBackend, entry: JournalEntry, fate: Reconciled, evidence: Evidence
) -> None:
    key = entry.key
    if fate.resolution is Resolution.RESUBMITTABLE:
        reason = UnknownSubmitError(
            "reconciled: a complete history walk after the start-timeout bound found no job "
            "with the body sent, so none exists"
        )
        await journal.record_unsent(key, reason)
    elif fate.resolution is Resolution.AMBIGUOUS:
        await journal.record_ambiguous(key, fate.candidates, fate.reason or "ambiguous")
    elif fate.request_id is not None:
        urls = _urls(core, entry, fate.request_id)
        await journal.record_submitted(key, urls, attempts=entry.attempts)
        output = await _known_output(core, entry, fate, evidence, urls)
        if output is not None:
            await journal.record_completed(key, urls, output)


def _urls(core: Core, entry: JournalEntry, request_id: str) -> JobUrls:
    if entry.urls is not None and entry.urls.request_id == request_id:
        return entry.urls
    endpoint = EndpointId.parse(entry.endpoint or DEFAULT_ENDPOINT)
    return job_urls(core.config.queue_url, endpoint, request_id)


async def _known_output(
    core: Core, entry: JournalEntry, fate: Reconciled, evidence: Evidence, urls: JobUrls
) -> EditImageOutput | None:
    """The job's output when it is already in hand: a webhook that carried it, or the
    history's copy of a job fal's queue no longer knows. None: let the batch follow it."""
    event = next((e for e in evidence.webhooks if e.request_id == fate.request_id), None)
    if event is not None:
        return _output_of(event.payload) if event.ok else None
    match = next((m for m in evidence.matches if m.request_id == fate.request_id), None)
    if match is None or await _alive(core, entry, urls):
        return None
    return _history_output(match)


def _history_output(match: HistoryItem) -> EditImageOutput | None:
    if match.status_code != 200:
        return None  # a failed job: the batch asks fal, and reports what it says
    return _output_of(match.json_output)


def _output_of(payload: object) -> EditImageOutput | None:
    if payload is None:
        return None
    try:
        return parse(payload, EditImageOutput)
    except ProtocolError:
        return None


async def _alive(core: Core, entry: JournalEntry, urls: JobUrls) -> bool:
    try:
        await attach(core, urls.request_id, entry.endpoint or DEFAULT_ENDPOINT).status()
    except FalEditError:
        return False
    return True


def webhook_output(event: WebhookEvent) -> EditImageOutput | None:
    """The output a successful job's webhook carried, when it parses."""
    return _output_of(event.payload) if event.ok else None
