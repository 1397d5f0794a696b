"""What a batch needs of its ledger, whichever database keeps it.

Two backends: :class:`~._sqlite.Journal`, one SQLite file written by one process (the
embedded default), and :class:`~._postgres.PostgresJournal`, one PostgreSQL database (or
schema) that many workers on many machines write at once. A shared ledger adds leases: a
worker *claims* an item before working on it, the claim is renewed while it works, and it is
released when done; a row whose lease expired is taken over by the next worker that claims it,
which re-attaches to its job by request id, or reports it ``unknown``, never submits it blind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import anyio
import attrs

from ..._exceptions import FalEditError
from ..._models import DownloadedFile, EditImageOutput, JobUrls
from ..._webhook_models import WebhookEvent
from ._states import JournalEntry, JournalSummary

__all__ = ["Claim", "JournalBackend", "LeaseLost"]


@attrs.frozen(kw_only=True)
class Claim:
    """The answer to a claim: the item's row (None when there was none), and who else holds
    it (None when this worker may work on it now)."""

    entry: JournalEntry | None
    held_by: str | None = None


class LeaseLost(Exception):
    """This worker's lease on an item expired and another worker took the item over: this
    worker must send no submit for it (not an error of the batch: the item goes on elsewhere)."""


@runtime_checkable
class JournalBackend(Protocol):
    """A batch ledger: the rows of :mod:`._states`, plus work sharing on shared backends.

    Every write method (``record_*``, from :class:`~._states.Recorder`) returns once its
    write is as durable as the transition needs; a backend may commit several at once.
    """

    read_only: bool
    #: Written by schema 1, so rows may be keyed as its command line keyed them.
    has_legacy_keys: bool

    @property
    def shared(self) -> bool:
        """True when other processes may write this ledger at the same time."""
        ...

    @property
    def where(self) -> Path | str:
        """The journal's file or the shared ledger's address (never a password)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def open(self) -> None:
        """Open (creating if needed) the ledger; harmless when already open."""
        ...

    async def aclose(self) -> None:
        """Close it (releasing this process's leases or lock); harmless to call twice."""
        ...

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, if any."""
        ...

    async def entries(self) -> list[JournalEntry]:
        """Every entry, oldest change first."""
        ...

    async def summary(self) -> JournalSummary:
        """Counts by state, the cost of accepted jobs, and the items that need attention."""
        ...

    async def legacy_row(self, fingerprint: str, taken: set[str]) -> JournalEntry | None:
        """A schema-1 row for this content under a name, not yet taken by another item."""
        ...

    async def claim(self, key: str) -> Claim:
        """Take ``key`` for this worker (a lease on a shared ledger) and read its row."""
        ...

    async def claimable(self, keys: Sequence[str]) -> set[str]:
        """Of ``keys``, those another worker no longer holds (finished, released, expired)."""
        ...

    async def release(self, key: str) -> None:
        """This worker is done with ``key`` for now: another may claim it."""
        ...

    async def owner_of(self, request_id: str) -> str | None:
        """The key of the row that holds ``request_id``, if any row does."""
        ...

    async def keep_leases(self) -> None:
        """Keep this worker's claims alive while the batch runs (returns at once when there
        are none to keep); cancelled when the batch ends."""
        ...

    # -- the transitions (see ``_states.Recorder``, which implements them for both) --------

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
        """A submit is about to be sent: durably, before the POST (under the cap), with the
        body exactly as sent and its start timeout (what reconciling a lost answer needs)."""
        ...

    async def record_submitted(self, key: str, urls: JobUrls, *, attempts: int) -> None:
        """fal accepted the job: its id and URLs, durably."""
        ...

    async def record_unsent(self, key: str, error: FalEditError | None = None) -> None:
        """The submit provably created no job."""
        ...

    async def record_unknown(
        self, key: str, error: FalEditError, *, urls: JobUrls | None = None
    ) -> None:
        """The submit's answer was lost: fal may have queued that job."""
        ...

    async def record_cancel_requested(self, key: str) -> None:
        """fal took the cancel; the job may still finish."""
        ...

    async def record_completed(
        self,
        key: str,
        urls: JobUrls,
        output: EditImageOutput,
        *,
        name: tuple[str, str] | None = None,
    ) -> None:
        """The job finished; its output is kept, and ``name`` (the ``(folder, stem)`` its
        outputs were claimed under, as :meth:`record_name` takes them) when given."""
        ...

    async def record_name(self, key: str, folder: str, stem: str) -> None:
        """The name the item's outputs get in ``folder``, claimed before writing."""
        ...

    async def record_files(self, key: str, files: Sequence[DownloadedFile]) -> None:
        """Some output files are on disk and verified; others failed (the state stays)."""
        ...

    async def record_downloaded(self, key: str, files: Sequence[DownloadedFile]) -> None:
        """Every output file is on disk and verified."""
        ...

    async def record_failed(self, key: str, error: FalEditError) -> None:
        """The item failed for good, by fal's verdict."""
        ...

    async def record_cancelled(self, key: str) -> None:
        """fal confirmed the job cancelled."""
        ...

    async def record_ambiguous(self, key: str, candidates: Sequence[str], reason: str) -> None:
        """Reconciling found several jobs this submit may be: never sent again."""
        ...

    # -- reconciling's writes: each lands only while the row is still the unknown row read --

    async def reconcile_submitted(
        self, seen: JournalEntry, urls: JobUrls, output: EditImageOutput | None = None
    ) -> bool:
        """``seen``'s lost submit is this job (``completed`` with ``output`` when known);
        False, writing nothing, when the row is no longer ``seen`` (unknown, same sent_at)."""
        ...

    async def reconcile_unsent(self, seen: JournalEntry, error: FalEditError) -> bool:
        """``seen``'s lost submit provably made no job; False when the row moved on."""
        ...

    async def reconcile_ambiguous(
        self, seen: JournalEntry, candidates: Sequence[str], reason: str
    ) -> bool:
        """Several jobs may be ``seen``'s; False when the row moved on."""
        ...

    # -- webhooks (``_webhooks.WebhookRecords`` implements them for both) ----------------

    async def batch_id(self) -> str:
        """This ledger's name in its jobs' webhook tags."""
        ...

    async def webhook_secret(self) -> bytes:
        """The secret the tags of this ledger's webhook URLs are signed with."""
        ...

    async def record_webhook(self, event: WebhookEvent) -> bool:
        """Keep a verified event once per request id; True when it was new."""
        ...

    def webhook_waiter(self, request_id: str) -> anyio.Event:
        """Set when this process records a webhook for ``request_id``."""
        ...

    def tag_waiter(self, item: str, attempt: int) -> anyio.Event:
        """Set when this process records a webhook tagged with this item and attempt."""
        ...

    async def webhook(self, request_id: str) -> WebhookEvent | None:
        """The recorded event of ``request_id``, if any."""
        ...

    async def tagged_webhooks(self, item: str, attempt: int) -> list[WebhookEvent]:
        """The recorded events tagged with this item and attempt."""
        ...

    async def webhooks(self) -> list[WebhookEvent]:
        """Every recorded event, oldest first."""
        ...
