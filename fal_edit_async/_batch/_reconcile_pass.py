"""One reconcile pass over a ledger: decide every ``unknown`` row and write its fate.

Run by a batch when it opens its journal (before anything is submitted), and by
``AsyncClient.reconcile`` (``fal-edit reconcile JOURNAL``). What each fate writes:

- resolved or adopted: the row becomes ``submitted`` with that job (a resume follows it), or
  ``completed`` with the job's output when the webhook carried it, or when fal's queue has
  forgotten the job and its history still holds the output (``json_output``);
- resubmittable: ``unsent`` (provably no job), so the batch submits it;
- ambiguous: ``ambiguous`` with the candidate jobs, never submitted again;
- unknown: unchanged.

The walk takes a while, and a shared ledger's workers go on meanwhile: the ledger is read
again after it, so a job some row recorded since (or a row now ``submitting`` the same body)
is never adopted, and every write lands only on the ``unknown`` row that was read (same state,
same ``sent_at``): a row moved on meanwhile keeps what its worker wrote.
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
from .._protocol import job_urls, trusted_job_urls
from .._reconcile_models import Reconciled, ReconcilePolicy, ReconcileReport, Resolution
from .._webhook_models import WebhookEvent
from ._ledger import JournalBackend, JournalEntry, JournalState
from ._ledger._states import canonical_body
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
    owners = _owners(entries)
    rows = [_lost(e) for e in lost]
    events = await journal.webhooks()
    found, seen, complete = await gather(core, rows, owners=owners, webhooks=events, policy=policy)
    # After the walk: any job it listed had its row's `submitting` written before, so this
    # read shows that row (still submitting, or holding the job, or unknown itself).
    now = await journal.entries()
    owners |= _owners(now)
    busy = _unsettled(now, lost)
    taken: set[str] = set()  # one job is one item's, even for repeats of one input
    decided: list[Reconciled] = []
    for entry, row, evidence in zip(lost, rows, found, strict=True):
        body = canonical_body(row.body) if row.body is not None else None
        evidence = _untaken(evidence, taken)
        evidence = attrs.evolve(
            evidence,
            matches=tuple(
                m for m in evidence.matches if owners.get(m.request_id, row.key) == row.key
            ),
            contested=tuple(k for k in busy.get(body, ()) if k != row.key),
        )
        fate = decide(row, evidence, policy)
        if fate.request_id is not None:
            taken.add(fate.request_id)
        if not await _record(core, journal, entry, fate, evidence):
            # Moved on since it was read (a worker or another pass wrote it), or another row
            # took the job meanwhile: left as it is; the same body is decided by a later pass.
            if body is not None:
                busy.setdefault(body, []).append(entry.key)
            reason = "the row changed while it was reconciled: left as its writer made it"
            fate = Reconciled(key=entry.key, resolution=Resolution.UNKNOWN, reason=reason)
        decided.append(fate)
    return ReconcileReport(rows=tuple(decided), history_seen=seen, history_complete=complete)


def _owners(entries: list[JournalEntry]) -> dict[str, str]:
    """Each request id the ledger holds (last jobs and earlier attempts') to its row's key."""
    owners: dict[str, str] = {}
    for e in entries:
        for request_id in (*e.past_ids, *((e.request_id,) if e.request_id else ())):
            owners[request_id] = e.key
    return owners


def _unsettled(
    entries: list[JournalEntry], lost: list[JournalEntry]
) -> dict[str | None, list[str]]:
    """Keys of rows whose last submit may have made a job no row holds yet, by sent body:
    ``submitting`` (being sent, or its worker died), and ``unknown`` rows this pass did not
    read as such (lost since; this pass's own share jobs out in order, one each)."""
    ours = {(e.key, e.sent_at) for e in lost}
    busy: dict[str | None, list[str]] = {}
    for e in entries:
        if e.sent_body is None:
            continue
        if e.state is JournalState.SUBMITTING or (
            e.state is JournalState.UNKNOWN and (e.key, e.sent_at) not in ours
        ):
            busy.setdefault(canonical_body(e.sent_body), []).append(e.key)
    return busy


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
) -> bool:
    """Write ``fate`` on ``entry``'s row while it is still that unknown row; False when it
    was not (nothing written). A row that stays unknown is not written."""
    if fate.resolution is Resolution.RESUBMITTABLE:
        reason = UnknownSubmitError(
            "reconciled: a complete history walk after the start-timeout bound found no job "
            "with the body sent, so none exists"
        )
        return await journal.reconcile_unsent(entry, reason)
    if fate.resolution is Resolution.AMBIGUOUS:
        return await journal.reconcile_ambiguous(entry, fate.candidates, fate.reason or "ambiguous")
    if fate.request_id is not None:
        urls = _urls(core, entry, fate.request_id)
        output = await _known_output(core, entry, fate, evidence, urls)
        return await journal.reconcile_submitted(entry, urls, output)
    return True


def _urls(core: Core, entry: JournalEntry, request_id: str) -> JobUrls:
    endpoint = EndpointId.parse(entry.endpoint or DEFAULT_ENDPOINT)
    if entry.urls is not None and entry.urls.request_id == request_id:
        return trusted_job_urls(core.config.queue_url, endpoint, entry.urls)
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
