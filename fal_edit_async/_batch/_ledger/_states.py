"""The ledger's states and transitions, in one place for every backend.

A row per item, keyed by its content (see ``_items.item_key``), moves through states that
only fal's answers move on::

    pending ─► submitting ─► submitted ─► completed ─► downloaded
    (shared       │             │  ▲
     ledgers)     │             ▼  │ (fal answered the cancel with "requested": the job may
                  │      cancel_requested     still finish; a resume polls it)
                  ▼             │
               unknown          ▼
                           cancelled (fal confirmed) · failed (fal's verdict) · unsent

``submitting`` is written durably *before* the submit POST, and ``submitted`` with the request
id durably as soon as fal answers. A row still ``submitting`` when nobody is working on it
belongs to a run that died between the two: fal may or may not have queued its job, so it
becomes ``unknown``, is reported, and is submitted again only when asked
(``resubmit_unknown``). ``unsent`` means the last submit provably created no job (fal refused
it, or the connection never opened): the next run submits it. ``pending`` is a row a shared
ledger made when a worker claimed the item, before any submit: the same as no row.

Each ``record_*`` method of :class:`Recorder` is one transition: the columns it writes are
decided here, and each backend only says how a row is written (``_upsert``, ``_update``, and
``_update_unknown`` for reconciling's conditional writes).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import attrs

from ..._converter import parse, to_wire
from ..._exceptions import FalEditError, JournalError
from ..._models import DownloadedFile, EditImageOutput, JobUrls

__all__ = [
    "IN_FLIGHT",
    "LOST_ANSWER",
    "canonical_body",
    "JournalEntry",
    "JournalState",
    "JournalSummary",
    "Recorder",
    "entry_of",
    "error_columns",
    "spent",
    "submitting_columns",
    "summarise",
    "jobs_named_twice",
]

LOST_ANSWER = (
    "this submit was sent, but fal's answer was never recorded (the run stopped first, or "
    "the journal could not write it): fal may have queued (and billed) that job"
)


class JournalState(StrEnum):
    """Where a journaled item stands (see ``docs/guarantees.md`` for what each means)."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    CANCEL_REQUESTED = "cancel_requested"
    COMPLETED = "completed"
    DOWNLOADED = "downloaded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNSENT = "unsent"
    UNKNOWN = "unknown"
    #: Reconciling found two or more jobs with the body sent: never submitted again.
    AMBIGUOUS = "ambiguous"

    @property
    def has_job(self) -> bool:
        """True when a job fal accepted (or may have) stands behind the row."""
        return self in _WITH_JOB


_WITH_JOB = frozenset(
    {
        JournalState.SUBMITTED,
        JournalState.CANCEL_REQUESTED,
        JournalState.COMPLETED,
        JournalState.DOWNLOADED,
    }
)

#: States whose job may be on fal right now (or about to be): what a global cap counts.
IN_FLIGHT = (JournalState.SUBMITTING, JournalState.SUBMITTED, JournalState.CANCEL_REQUESTED)


@attrs.frozen(kw_only=True)
class JournalEntry:
    """One journaled item."""

    key: str
    state: JournalState
    request_id: str | None = None
    endpoint: str | None = None
    urls: JobUrls | None = None
    input: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    output: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    files: tuple[DownloadedFile, ...] = ()
    error: str | None = None
    error_type: str | None = None
    attempts: int = 0
    cost: Decimal = Decimal(0)
    updated_at: float = 0.0
    sent_at: float | None = None
    #: The folder and the name stem this item's outputs were claimed under, before writing.
    folder: str | None = None
    stem: str | None = None
    #: On a shared ledger: the worker holding the item's lease now, if any.
    holder: str | None = None
    #: The last submit's body exactly as sent (decoded), to find it in fal's history.
    sent_body: Any = attrs.field(default=None, hash=False)
    #: The start timeout that submit carried (seconds), which bounds when its job ended.
    start_timeout: float | None = None
    #: Jobs of this item's earlier attempts (never the last attempt's).
    past_ids: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class JournalSummary:
    """What a journal holds: counts by state, the cost of the jobs fal accepted, and the items
    that need a person (``unknown`` and ``failed``, with their reasons).

    ``path`` is the journal's file, or a shared ledger's address (without its password);
    ``workers`` counts the items each live worker of a shared ledger holds.
    """

    path: Path | str
    counts: Mapping[JournalState, int]
    estimated_cost: Decimal
    unknown: tuple[JournalEntry, ...]
    failed: tuple[JournalEntry, ...]
    workers: Mapping[str, int] = attrs.field(factory=dict)
    #: Each job (by request id) two or more rows name, with their keys: a journal edited by
    #: hand, or rows copied. A rerun follows it for none of them (they end ``unknown``).
    jobs_named_twice: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    @property
    def total(self) -> int:
        """Every item the journal knows (``pending`` rows included)."""
        return sum(self.counts.values())


def entry_of(row: Mapping[str, Any]) -> JournalEntry:
    """A row (column name to value, as either backend reads it) as an entry.

    Raises:
        JournalError: the row is damaged (edited by hand, say): it names the row.
    """
    try:
        return _entry_of(row)
    except (ValueError, TypeError, ArithmeticError, FalEditError) as exc:
        raise JournalError(
            f"journal row {row.get('key')!r} is damaged ({exc}); restore the journal from a "
            "copy, or delete that row (its item is then new: a rerun pays for it again)"
        ) from exc


def _entry_of(row: Mapping[str, Any]) -> JournalEntry:
    attempts = row["attempts"]
    if type(attempts) is not int or attempts < 0:
        raise ValueError(f"attempts is {attempts!r}, not a count")
    try:
        cost = Decimal(row["cost"])
    except ArithmeticError:
        raise ValueError(f"cost is {row['cost']!r}, not an amount") from None
    urls = None
    if row["request_id"] and row["status_url"]:
        urls = JobUrls(
            request_id=row["request_id"],
            status_url=row["status_url"],
            response_url=row["response_url"],
            cancel_url=row["cancel_url"],
        )
    files = tuple(parse(f, DownloadedFile) for f in json.loads(row["files"] or "[]"))
    return JournalEntry(
        key=row["key"],
        state=JournalState(row["state"]),
        request_id=row["request_id"],
        endpoint=row["endpoint"],
        urls=urls,
        input=json.loads(row["input"]) if row["input"] else None,
        output=json.loads(row["output"]) if row["output"] else None,
        files=files,
        error=row["error"],
        error_type=row["error_type"],
        attempts=attempts,
        cost=cost,
        updated_at=row["updated_at"],
        sent_at=row.get("sent_at"),  # schema 1 lacks these
        folder=row.get("folder"),
        stem=row.get("stem"),
        holder=row.get("holder"),
        sent_body=json.loads(body) if (body := row.get("sent_body")) else None,
        start_timeout=row.get("start_timeout"),
        past_ids=tuple(json.loads(row.get("past_ids") or "[]")),
    )


#: Rows whose last submit may have made a job although no request id is known.
_MAYBE_BILLED = frozenset({JournalState.SUBMITTING, JournalState.UNKNOWN, JournalState.AMBIGUOUS})


def spent(entries: Sequence[JournalEntry]) -> Decimal:
    """What the rows' submits may have cost, at their estimate: every submit sent, unless
    fal's answer proved it made no job (``unsent``). A lost answer counts: fal may have run
    it, and a budget must not be crossed on the hope that it did not."""
    total = Decimal(0)
    for e in entries:
        if e.request_id or e.state in _MAYBE_BILLED:
            total += e.cost * e.attempts
        elif e.state is JournalState.UNSENT and e.attempts > 1:
            total += e.cost * (e.attempts - 1)  # the earlier attempts had jobs
    return total


def summarise(path: Path | str, entries: Sequence[JournalEntry], **extra: Any) -> JournalSummary:
    """Counts, cost and the rows that need a person, from every entry."""
    counts: dict[JournalState, int] = {}
    for e in entries:
        counts[e.state] = counts.get(e.state, 0) + 1
    return JournalSummary(
        path=path,
        counts=counts,
        estimated_cost=spent(entries),
        unknown=tuple(e for e in entries if e.state is JournalState.UNKNOWN),
        failed=tuple(e for e in entries if e.state is JournalState.FAILED),
        jobs_named_twice=jobs_named_twice(entries),
        **extra,
    )


def jobs_named_twice(entries: Sequence[JournalEntry]) -> dict[str, tuple[str, ...]]:
    """Each request id two or more rows hold, with the keys of those rows.

    Only rows a rerun would follow the job for, or take its output from: a failed row only
    replays its verdict, and a cancelled or unsent one is submitted again (a new job)."""
    holders: dict[str, list[str]] = {}
    for e in entries:
        if e.request_id and e.state not in _NAMES_NO_JOB:
            holders.setdefault(e.request_id, []).append(e.key)
    return {request_id: tuple(k) for request_id, k in holders.items() if len(k) > 1}


def _job_columns(urls: JobUrls) -> dict[str, Any]:
    return {
        "request_id": urls.request_id,
        "status_url": urls.status_url,
        "response_url": urls.response_url,
        "cancel_url": urls.cancel_url,
    }


def error_columns(error: FalEditError) -> dict[str, Any]:
    """An error as the row keeps it (its message and type, never the key)."""
    return {
        "error": str(error),
        "error_type": getattr(error, "error_type", None) or type(error).__name__,
    }


class Recorder(ABC):
    """Every transition of a row, written through the backend's two primitives.

    A ``record_*`` call returns once its write is as durable as the transition needs
    (``durable=True``: on disk, fsynced, before the call returns). A backend may gather
    several calls into one commit, as long as none returns before its own write is.
    """

    @abstractmethod
    async def _upsert(self, key: str, values: dict[str, Any], *, durable: bool = False) -> None:
        """Write ``values`` into ``key``'s row, creating it if needed (``updated_at`` is set)."""

    @abstractmethod
    async def _update(self, key: str, values: dict[str, Any]) -> None:
        """Write ``values`` into ``key``'s existing row, if there is one."""

    @abstractmethod
    async def _update_unknown(
        self, seen: JournalEntry, values: dict[str, Any], *, job: str | None = None
    ) -> bool:
        """Write ``values`` (durably) into ``seen``'s row only while it is still that
        ``unknown`` row (state ``unknown``, the same ``sent_at``) and, with ``job``, while no
        other row holds that request id (as its last job or an earlier attempt's): checked
        and written atomically. True when it was written (``updated_at`` is set)."""

    async def record_submitting(
        self,
        key: str,
        *,
        endpoint: str,
        input: Mapping[str, Any],
        attempts: int,
        cost: Decimal,
        max_in_flight: int | None = None,
        sent_body: Any = None,
        start_timeout: float | None = None,
        past_ids: Sequence[str] = (),
    ) -> None:
        """A submit for ``key`` is about to be sent: durably, before the POST.

        ``sent_body`` is the body exactly as it will be sent (kept as canonical JSON, so a
        lost answer can be found in fal's history by it), ``start_timeout`` the one it
        carries, ``past_ids`` the jobs of the item's earlier attempts.

        ``max_in_flight``: on a shared ledger, first wait until fewer rows than that are in
        flight (:data:`IN_FLIGHT`, held by a live worker) across every worker; one process
        needs no wait, since its own jobs limit is capped at it.
        """
        del max_in_flight
        values = submitting_columns(
            endpoint,
            input,
            attempts,
            cost,
            sent_body=sent_body,
            start_timeout=start_timeout,
            past_ids=past_ids,
        )
        await self._upsert(key, values, durable=True)

    async def record_submitted(self, key: str, urls: JobUrls, *, attempts: int) -> None:
        """fal accepted a job for ``key``: its id and URLs, durably, before anything else."""
        await self._upsert(key, _submitted_columns(urls, attempts), durable=True)

    async def record_unsent(self, key: str, error: FalEditError | None = None) -> None:
        """The submit provably created no job: fal refused it, it never left, or the run
        ended while it waited out a refusal (no ``error`` then)."""
        reason = error_columns(error) if error else {"error": "stopped before any submit was taken"}
        await self._upsert(key, {"state": JournalState.UNSENT.value, **reason})

    async def record_unknown(
        self, key: str, error: FalEditError, *, urls: JobUrls | None = None
    ) -> None:
        """The submit's answer was lost: fal may have queued that job (``urls`` when fal's
        error answer named it, so a resume can ask fal about it)."""
        job = _job_columns(urls) if urls is not None else {}
        values = {"state": JournalState.UNKNOWN.value, **job, **error_columns(error)}
        await self._upsert(key, values, durable=True)

    async def record_cancel_requested(self, key: str) -> None:
        """fal took the cancel, but a running job may still finish: a resume polls it."""
        await self._upsert(key, {"state": JournalState.CANCEL_REQUESTED.value})

    async def record_completed(
        self,
        key: str,
        urls: JobUrls,
        output: EditImageOutput,
        *,
        name: tuple[str, str] | None = None,
    ) -> None:
        """The job finished and its output is known (kept: fal's copy expires); with
        ``name``, the ``(folder, stem)`` its outputs were claimed under, as
        :meth:`record_name` writes it, in the same write.

        The job's id is written again: had the ``submitted`` write failed (a full disk that
        then freed), this row still names its job.
        """
        values = _completed_columns(urls, output)
        if name is not None:
            values["folder"], values["stem"] = name
        await self._upsert(key, values)

    async def record_name(self, key: str, folder: str, stem: str) -> None:
        """The name this item's outputs get in ``folder`` (absolute), claimed before any is
        written, so a later run finishes them under that name instead of leaving a half set."""
        await self._update(key, {"folder": folder, "stem": stem})

    async def record_files(self, key: str, files: Sequence[DownloadedFile]) -> None:
        """Some of the outputs are on disk and verified, the others failed: the state stays,
        and a rerun knows these files for the item's own (it may repair them, and never
        takes them for another run's)."""
        await self._update(key, {"files": _files_column(files)})

    async def record_downloaded(self, key: str, files: Sequence[DownloadedFile]) -> None:
        """Every output file is on disk and verified (paths kept absolute)."""
        values = {"state": JournalState.DOWNLOADED.value, "files": _files_column(files)}
        await self._upsert(key, values)

    async def record_failed(self, key: str, error: FalEditError) -> None:
        """The item failed for good, by fal's verdict (its error is kept, never the key)."""
        await self._upsert(key, {"state": JournalState.FAILED.value, **error_columns(error)})

    async def record_cancelled(self, key: str) -> None:
        """fal confirmed the job was cancelled; a new run submits the item again."""
        await self._upsert(key, {"state": JournalState.CANCELLED.value})

    async def record_ambiguous(self, key: str, candidates: Sequence[str], reason: str) -> None:
        """Reconciling found several jobs this submit may be: reported, never sent again."""
        await self._upsert(key, _ambiguous_columns(candidates, reason), durable=True)

    # -- reconciling: a fate lands only on the unknown row it was decided for ---------------
    #
    # A reconcile pass reads the rows, walks fal's history, then writes; meanwhile a worker of
    # a shared ledger (or a second pass) may have moved the row on: re-attached it, submitted
    # it again, or given it another fate. Each write below is therefore conditional on the row
    # still being the ``unknown`` row that was read; False means it was not, and nothing
    # was written.

    async def reconcile_submitted(
        self, seen: JournalEntry, urls: JobUrls, output: EditImageOutput | None = None
    ) -> bool:
        """The lost submit's job is ``urls``'s: ``submitted`` (or ``completed`` when its
        output is already in hand), only while ``seen`` is still the row's state and no
        other row holds that job."""
        values = _submitted_columns(urls, seen.attempts)
        if output is not None:
            values |= _completed_columns(urls, output)
        # Two passes at once may each have decided this job for a different row.
        return await self._update_unknown(seen, values, job=urls.request_id)

    async def reconcile_unsent(self, seen: JournalEntry, error: FalEditError) -> bool:
        """The lost submit provably made no job: ``unsent``, only while ``seen`` holds."""
        return await self._update_unknown(
            seen, {"state": JournalState.UNSENT.value, **error_columns(error)}
        )

    async def reconcile_ambiguous(
        self, seen: JournalEntry, candidates: Sequence[str], reason: str
    ) -> bool:
        """Several jobs may be the lost submit's: ``ambiguous``, only while ``seen`` holds."""
        return await self._update_unknown(seen, _ambiguous_columns(candidates, reason))


def _submitted_columns(urls: JobUrls, attempts: int) -> dict[str, Any]:
    return {
        "state": JournalState.SUBMITTED.value,
        **_job_columns(urls),
        "attempts": attempts,
        "output": None,
        "files": None,
        "error": None,
        "error_type": None,
    }


def _files_column(files: Sequence[DownloadedFile]) -> str:
    return json.dumps([to_wire(attrs.evolve(f, path=f.path.absolute())) for f in files])


def _completed_columns(urls: JobUrls, output: EditImageOutput) -> dict[str, Any]:
    return {
        "state": JournalState.COMPLETED.value,
        **_job_columns(urls),
        "output": json.dumps(to_wire(output)),
    }


def _ambiguous_columns(candidates: Sequence[str], reason: str) -> dict[str, Any]:
    return {
        "state": JournalState.AMBIGUOUS.value,
        "error": f"{reason}: {', '.join(candidates)}",
        "error_type": "ambiguous",
    }


def canonical_body(body: Any) -> str:
    """The JSON text a sent body is kept as: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def submitting_columns(
    endpoint: str,
    input: Mapping[str, Any],
    attempts: int,
    cost: Decimal,
    *,
    sent_body: Any = None,
    start_timeout: float | None = None,
    past_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """The columns of a ``submitting`` row (every backend's)."""
    return {
        "state": JournalState.SUBMITTING.value,
        "endpoint": endpoint,
        "input": json.dumps(input),
        "attempts": attempts,
        "cost": str(cost),
        "sent_at": time.time(),
        "sent_body": None if sent_body is None else canonical_body(sent_body),
        "start_timeout": start_timeout,
        "past_ids": json.dumps(list(past_ids)) if past_ids else None,
        # The previous attempt's job (failed, or cancelled) is not this submit's.
        "request_id": None,
        "status_url": None,
        "response_url": None,
        "cancel_url": None,
        "error": None,
        "error_type": None,
    }


#: The states whose row's request id no rerun follows (see :func:`jobs_named_twice`).
_NAMES_NO_JOB = frozenset({JournalState.FAILED, JournalState.CANCELLED, JournalState.UNSENT})
