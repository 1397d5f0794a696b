"""One batch item's way through the pipeline: validate, upload, submit, follow, download.

The :class:`Runner` holds what a batch shares (limits, budget, journal, output names) and runs
each item to an :class:`ItemResult`; ``edit_many`` in this package's ``__init__`` feeds it.

With a journal, every step that could cost money is written down before it can be lost (see
``_ledger``): the write-ahead row before the POST, the request id as fal answers, fal's answer
to a cancel, the output as it is fetched. A resumed item goes on from the state its row is in,
and only fal's answers move a row on: a cancel counts when fal confirms it, a failure is
final when it is the job's own verdict.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import attrs

from .._converter import input_from_dict, input_to_wire, parse
from .._core import ClientClosedError, Core
from .._downloads import download_outcomes
from .._endpoint import DEFAULT_ENDPOINT, EndpointId
from .._exceptions import (
    APIError,
    AuthError,
    BudgetExceededError,
    DownloadError,
    FalEditError,
    InputError,
    InternalError,
    JobCancelledError,
    JobFailedError,
    JournalError,
    NotFoundError,
    ProtocolError,
    TransportError,
    UnknownSubmitError,
    field_errors_of,
)
from .._files import (
    EXTENSIONS,
    FileIdentity,
    file_identity,
    fold_name,
    holds,
    numbered_stem,
    safe_stem,
    stem_of_output,
)
from .._job import JobHandle, attach, call_back, submit
from .._models import (
    CancelOutcome,
    Completed,
    DownloadedFile,
    EditImageInput,
    EditImageOutput,
    InProgress,
    JobStatus,
    JobUrls,
    Queued,
    SubmitOptions,
)
from .._name_template import DEFAULT_NAMES, NameTemplate, claim_number
from .._pricing import estimate_cost
from .._protocol import (
    check_image_count,
    from_fal,
    job_retryable,
    submit_never_queued,
    trusted_job_urls,
)
from .._reconcile_models import ReconcilePolicy
from .._slots import Slots
from .._statistics import RetryKind
from .._uploads import Uploader
from .._webhook_models import WebhookTag, tag_url
from ._adaptive import AdaptiveLimiter
from ._events import (
    BatchEvent,
    ItemCompleted,
    ItemDownloaded,
    ItemFailed,
    ItemInterrupted,
    ItemLog,
    ItemQueued,
    ItemReattached,
    ItemStarted,
    ItemSubmitted,
)
from ._int_set import IntSet
from ._items import (
    EventCallback,
    ItemResult,
    ItemState,
    describe_input,
    fingerprint,
    reads_files,
    split_item,
)
from ._ledger import JournalBackend, JournalEntry, JournalState, LeaseLost
from ._ledger._states import jobs_named_twice, spent
from ._tracking import await_tagged, await_webhook

__all__ = ["Budget", "Runner"]


class _Held(Exception):
    """Another live worker of a shared ledger holds this item: it is checked again later."""


#: fal's error type for a job whose result expired before anyone fetched it.
EXPIRED = "result_expired"
#: How often a worker of a shared ledger looks again at the items other workers held.
SWEEP_INTERVAL = 0.25


def _stem_of(input: EditImageInput, name: str | None, fallback: str) -> str:
    if name is not None:
        return safe_stem(name)
    first = input.image_urls[0]
    if isinstance(first, PurePath | os.PathLike):
        return safe_stem(Path(first).stem)
    if isinstance(first, str) and not first.startswith("data:"):
        stem = PurePath(urlsplit(first).path).stem
        if stem:
            return safe_stem(stem)
    return safe_stem(fallback)  # a data URI or bytes: claim_name makes it unique


class _InOrder:
    """Lets item ``i`` take its turn only after items ``0..i-1`` took theirs.

    Repeats of an input are numbered (``~2``) in feed order; describing an item may read its
    files in a worker thread, so items finish that step in any order, and wait here.
    """

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[int, anyio.Event] = {}

    @asynccontextmanager
    async def turn(self, index: int) -> AsyncIterator[None]:
        while self._next < index:
            await self._waiting.setdefault(index, anyio.Event()).wait()
        try:
            yield
        finally:
            self._next = index + 1
            if (event := self._waiting.pop(index + 1, None)) is not None:
                event.set()


@attrs.define
class Budget:
    """The batch's spending limit and what its accepted jobs are estimated to cost."""

    limit: Decimal | None
    committed: Decimal = Decimal(0)

    def reserve(self, cost: Decimal) -> None:
        """Count ``cost`` as spent, or raise when it would cross the limit."""
        if self.limit is not None and self.committed + cost > self.limit:
            raise BudgetExceededError(
                estimate=float(cost), spent=float(self.committed), budget=float(self.limit)
            )
        self.committed += cost


@attrs.define
class _Item:
    """One valid item on its way through the pipeline."""

    index: int
    key: str
    ledger_key: str
    stem: str  # what the outputs are called after; claimed for real when they are written
    input: EditImageInput
    description: Mapping[str, Any]
    cost: Decimal
    attempts: int = 0
    retry_base: int = 0  # job_retries count from here (moved on by --retry-failed)
    accepted: int = 0  # jobs fal accepted (and so may bill): what the cost counts
    request_id: str | None = None
    resumed: bool = False
    #: The job in flight, to cancel when the batch is left early; None once it finished.
    live: JobHandle | None = None
    wire: EditImageInput | None = None
    #: The last submit's answer was lost: fal may have queued that job.
    unknown: bool = False
    #: The stem of the files an earlier run wrote for this item in this folder.
    owned_stem: str | None = None
    #: The names of the files the journal says an earlier run wrote for it here: the only
    #: ones it may write over (see TempFile.commit); of the rest only the claim is known.
    owned_files: frozenset[str] = frozenset()
    #: For an item without a key: its fingerprint, to find a schema-1 row by it.
    fingerprint: str | None = None
    #: The journal holds this item's request id (its ``submitted`` write landed).
    recorded: bool = False
    #: This worker holds the item's lease on a shared ledger (released when it is done).
    claimed: bool = False
    #: Jobs of this item's earlier attempts (a lost answer's history match is never one).
    past_ids: tuple[str, ...] = ()
    #: When the last submit was sent (unix seconds) and the start timeout it carried.
    sent_at: float | None = None
    start_timeout: float | None = None
    #: The output names claimed as the job completed (the stem, then each file's name
    #: without extension), journaled with the output; the download takes them.
    claim: tuple[str, list[str]] | None = None
    #: What a refused ``completed`` write held (the job, its output, the name claimed for
    #: it), and the files a refused ``downloaded`` write held: written again later.
    unsaved: tuple[JobUrls, EditImageOutput, tuple[str, str] | None] | None = None
    unfiled: Sequence[DownloadedFile] | None = None

    def result(self, state: ItemState, **values: Any) -> ItemResult:
        return ItemResult(
            key=self.key,
            index=self.index,
            state=state,
            input=self.input,
            request_id=self.request_id,
            attempts=self.attempts,
            cost=self.cost * self.accepted,
            resumed=self.resumed,
            **values,
        )


@attrs.define
class Runner:
    """What every item of one batch shares, and the steps each item goes through."""

    core: Core
    uploader: Uploader
    jobs: AdaptiveLimiter
    downloads: Slots
    download_to: Path | None
    job_retries: int
    on_event: EventCallback | None
    budget: Budget
    journal: JournalBackend | None
    submit_options: SubmitOptions
    resubmit_unknown: bool = False
    retry_failed: bool = False
    overwrite: bool = False
    names: NameTemplate = DEFAULT_NAMES
    #: The image files already in the output folder when the batch started, by their names
    #: without extension, case-folded.
    foreign: frozenset[str] = frozenset()
    #: The names (likewise) this batch has given out.
    claimed: set[str] = attrs.field(factory=set)
    stem_suffixes: dict[str, int] = attrs.field(factory=dict)
    #: The identities (by :func:`_slot`) items so far had, and how often each repeated one
    #: came: the n-th of an identity gets ``~n``.
    seen: IntSet = attrs.field(factory=IntSet)
    repeats: dict[int, int] = attrs.field(factory=dict)
    order: _InOrder = attrs.field(factory=_InOrder)
    #: Request ids this batch has given to an item: no job is two items' result.
    owned_ids: IntSet = attrs.field(factory=IntSet)  # by hash(): a clash only makes an unknown
    #: Each journaled request id's row, read once when the batch starts.
    journaled_ids: dict[str, str] = attrs.field(factory=dict)
    #: The request ids two or more rows hold then (a journal edited by hand), and their keys.
    twice_held: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    #: The keys (by ``hash``) of the rows a ledger that only this process writes held when
    #: the batch started: an item not among them has no row, and no read is made for it.
    #: None: not read (a shared ledger, whose rows other workers write meanwhile).
    journaled_keys: IntSet | None = None
    #: Schema-1 rows (keyed ``<name>@<fingerprint>``) already taken by an item of this run.
    legacy_taken: set[str] = attrs.field(factory=set)
    #: Items cut short when the batch was left early (they yield no result).
    interrupted: int = 0
    #: Of those, the jobs in flight whose cancel fal accepted.
    cancels_accepted: int = 0
    #: Set once the journal could not be written: nothing more is submitted.
    ledger_error: JournalError | None = None
    #: Rows a refused write left short of what this run knows, by ledger key, with the
    #: write's error; a later write that makes the row whole again (its job and output, or
    #: its files) takes the key out.
    damaged: dict[str, JournalError] = attrs.field(factory=dict)
    #: Items with a refused ``completed`` or ``downloaded`` write, by ledger key: tried once
    #: more as the batch closes (:meth:`save_unsaved`).
    unsaved: dict[str, _Item] = attrs.field(factory=dict)
    #: Jobs in flight at most across every worker of a shared ledger.
    max_in_flight: int | None = None
    #: Items another worker of a shared ledger held when their turn came, by ledger key.
    deferred: dict[str, _Item] = attrs.field(factory=dict)
    #: When this batch began (wall clock, as rows' ``updated_at``).
    began: float = attrs.field(factory=time.time)
    #: Items being worked on now (for knowing when a shared batch is over).
    active: int = 0
    #: Set when an item ends or is deferred: the sweeper looks again.
    changed: anyio.Event = attrs.field(factory=anyio.Event)
    #: Set once fal refused the key or the account (401, 402, 403): every other submit would
    #: be refused the same way, so nothing more is sent.
    account_error: AuthError | None = None
    #: The items not sent because of it (ledger keys).
    account_refused: set[str] = attrs.field(factory=set)

    @property
    def shared(self) -> bool:
        return self.journal is not None and self.journal.shared

    #: How lost submits are reconciled, and the start timeout journaled submits carry.
    policy: ReconcilePolicy = attrs.field(factory=ReconcilePolicy)
    #: (batch id, secret) of the webhook tags, when jobs are webhook-tracked.
    tag: tuple[str, bytes] | None = None

    @property
    def tracked(self) -> bool:
        """Jobs end by their webhook record, not a status stream (journal + webhook_url)."""
        return self.tag is not None and self.journal is not None

    def _options_for(self, it: _Item) -> SubmitOptions:
        """This submit's options: a journaled one always carries a start timeout (so a lost
        answer can be proven jobless later), a tracked one its own tagged webhook URL."""
        options: SubmitOptions = {**self.submit_options}
        if self.journal is not None and options.get("start_timeout") is None:
            options["start_timeout"] = self.policy.start_timeout
        base = options.get("webhook_url")
        if self.tag is not None and base is not None:
            batch, secret = self.tag
            tag = WebhookTag(batch=batch, item=it.ledger_key, attempt=it.attempts)
            options["webhook_url"] = tag_url(base, tag, secret)
        return options

    def _bound(self, it: _Item) -> float | None:
        if it.sent_at is None or it.start_timeout is None:
            return None
        return self.policy.bound(it.sent_at, it.start_timeout)

    @property
    def endpoint(self) -> str:
        return self.submit_options.get("endpoint", DEFAULT_ENDPOINT)

    async def emit(self, event: BatchEvent) -> None:
        if self.on_event is not None:
            with self.core.user_code():  # from a close's hook too: no requests of its own
                await call_back(self.on_event, event)  # type: ignore[arg-type]

    def claim_name(self, it: _Item, count: int, request_id: str = "") -> tuple[str, list[str]]:
        """The names this item's ``count`` files get (without extensions), and the claim the
        journal keeps for them: unique in the batch, and clear of every file in the folder
        that the batch does not own (an input, another run's output), unless ``overwrite``.

        A claim the journal says this item made before is kept when it is still free.
        Names compare case-insensitively: on macOS and Windows ``Photo`` replaces ``photo``.
        """
        template, stem = self.names, it.stem
        key = it.key

        def bases(claim: int) -> list[str]:
            return template.bases(
                stem=stem, claim=claim, count=count, key=key, request_id=request_id
            )

        if it.owned_stem is not None:
            claim = claim_number(it.owned_stem, stem)
            if claim is not None:
                names = bases(claim)
                folded = {fold_name(n) for n in names}
                if len(folded) == count and not folded & self.claimed:
                    self.claimed |= folded
                    return it.owned_stem, names
        # Remember where each stem's numbering got to: re-scanning from 1 made a batch of
        # identical inputs quadratic.
        claim = self.stem_suffixes.get(stem, 1)
        while True:
            names = bases(claim)
            folded = {fold_name(n) for n in names}
            if len(folded) != count:  # refused before submit; never loop on it
                raise InputError("name_template", template.text, "'{n}' for several images")
            if not folded & self.claimed and (self.overwrite or not folded & self.foreign):
                break
            claim += 1
        self.stem_suffixes[stem] = claim
        self.claimed |= folded
        return numbered_stem(stem, claim), names

    def _identity(self, key: str | None, print_: str) -> str:
        """The item's ledger key: from its content (and the caller's key), never its position.

        Repeats of one input in a batch are distinct items: the n-th gets ``~n``, counted in
        the order items are fed (:class:`_InOrder`).
        """
        base = f"{key}@{print_}" if key is not None else print_
        slot = _slot(base)
        if self.seen.add(slot):
            return base
        n = self.repeats[slot] = self.repeats.get(slot, 1) + 1
        return f"{base}~{n}"

    async def run(self, index: int, item: Any) -> ItemResult | None:
        """Take one item from its raw form to its result; never raises but cancellation.

        None: another worker of a shared ledger holds the item (see :meth:`attempt`)."""
        key, name, raw = split_item(item)
        try:
            input = raw if isinstance(raw, EditImageInput) else input_from_dict(raw)
            if input.num_images > 1 and not self.names.numbered:
                msg = "'{n}' in the template when an item asks for several images"
                raise InputError("name_template", self.names.text, msg)
        except Exception as exc:  # InputError, or a mapping that breaks unforeseeably
            async with self.order.turn(index):
                pass
            label = name or f"item-{index}"
            error = exc if isinstance(exc, InputError) else _internal(exc)
            await self.emit(ItemFailed(key=label, request_id=None, error=error))
            return ItemResult(key=label, index=index, state=ItemState.FAILED, error=error)
        if reads_files(input):  # files are known by their bytes: hash them off the loop
            description = await anyio.to_thread.run_sync(describe_input, input, self.endpoint)
        else:
            description = describe_input(input, self.endpoint)
        print_ = fingerprint(description)
        async with self.order.turn(index):
            ledger_key = self._identity(key, print_)
        label = name or ledger_key
        it = _Item(
            index=index,
            key=label,
            ledger_key=ledger_key,
            stem=_stem_of(input, name, label),
            input=input,
            description=description,
            cost=estimate_cost(input).usd,
            fingerprint=print_ if key is None else None,
        )
        return await self.attempt(it)

    async def attempt(self, it: _Item) -> ItemResult | None:
        """Work on one item; None when another worker of a shared ledger holds it (it is in
        :attr:`deferred` then, for :meth:`sweep` to try again)."""
        self.active += 1
        try:
            return await self._process(it)
        except (_Held, LeaseLost):
            self.deferred[it.ledger_key] = it
            return None
        except FalEditError as exc:
            return await self._failed(it, exc)
        except ClientClosedError as exc:  # the client was closed under the batch
            return await self._closed_under(it, exc)
        except Exception as exc:  # not ours: this item's failure, never the whole batch's
            return await self._failed(it, _internal(exc))
        except anyio.get_cancelled_exc_class():
            self.interrupted += 1  # cut short with the batch: no result, but part of it
            raise
        finally:
            self.active -= 1
            if it.claimed and self.journal is not None:
                it.claimed = False
                with anyio.CancelScope(shield=True):
                    await self._write(self.journal.release(it.ledger_key))
            self.changed.set()

    async def sweep(
        self, deliver: Callable[[ItemResult], Awaitable[None]], fed: anyio.Event
    ) -> None:
        """On a shared ledger: try again the items other workers held, as they let go of
        them (finished, released, or dead with their lease expired), until the batch is over.

        Items taken over from a dead worker run beside the pipeline's own slots: the jobs
        limit may be full of items waiting for room under ``max_in_flight``, which only the
        dead worker's jobs, once followed to their end, can make.
        """
        assert self.journal is not None
        journal = self.journal

        async def again(it: _Item) -> None:
            result = await self.attempt(it)
            if result is not None:
                await deliver(result)

        async with anyio.create_task_group() as tg:
            while not (fed.is_set() and not self.deferred and self.active == 0):
                with anyio.move_on_after(SWEEP_INTERVAL):
                    await self.changed.wait()
                self.changed = anyio.Event()
                if not self.deferred:
                    continue
                try:
                    ready = await journal.claimable(list(self.deferred))
                except JournalError as exc:
                    self.ledger_error = self.ledger_error or exc
                    ready = set(self.deferred)  # each one ends on the error, one by one
                for key in ready:
                    it = self.deferred.pop(key)
                    self.active += 1  # counted before the task starts, so the loop waits
                    tg.start_soon(self._again_counted, again, it)

    async def _again_counted(self, again: Callable[[_Item], Awaitable[None]], it: _Item) -> None:
        try:
            await again(it)
        finally:
            self.active -= 1
            self.changed.set()

    async def _closed_under(self, it: _Item, exc: ClientClosedError) -> ItemResult:
        """The item's end when its client was closed: not submitted, if nothing was."""
        error = TransportError(f"not sent: {exc}" if it.accepted == 0 else str(exc))
        if it.accepted == 0 and not it.unknown:
            await self.emit(ItemFailed(key=it.key, request_id=None, error=error))
            return it.result(ItemState.NOT_SUBMITTED, error=error)
        return await self._failed(it, error)

    async def _failed(self, it: _Item, exc: FalEditError) -> ItemResult:
        await self.emit(ItemFailed(key=it.key, request_id=it.request_id, error=exc))
        journal = self.journal
        if isinstance(exc, JobCancelledError):
            if journal is not None:  # fal confirmed it: a new run submits the item again
                await self._write(journal.record_cancelled(it.ledger_key), short=it)
            return it.result(ItemState.CANCELLED, error=exc)
        # Only fal's verdict on the job is final. After a failed download, a garbled status or
        # a refused job retry the row keeps its job, so a re-run re-attaches for free.
        if isinstance(exc, JobFailedError) and it.request_id is not None and journal is not None:
            await self._write(journal.record_failed(it.ledger_key, _typed(exc)), short=it)
        if it.unknown:
            state = ItemState.UNKNOWN
        elif isinstance(exc, JournalError) and it.accepted == 0:
            state = ItemState.NOT_SUBMITTED
        elif it.ledger_key in self.account_refused:
            state = ItemState.NOT_SUBMITTED
        else:
            state = ItemState.FAILED
        return it.result(state, error=exc)

    async def _write(
        self,
        write: Awaitable[None],
        *,
        short: _Item | None = None,
        whole: _Item | None = None,
    ) -> bool:
        """Await a journal write; a failure stops new submits, never this item's outcome.
        True when the write landed.

        ``short``: the item whose row a failure of this write leaves misleading to a rerun
        (no job id or output, a lost submit's fate, a claim, fal's verdict); ``whole``: the
        item whose row this write makes whole again (its job and output, or its files).
        """
        try:
            await write
        except JournalError as exc:
            self.ledger_error = self.ledger_error or exc
            if short is not None:
                self.damaged.setdefault(short.ledger_key, exc)
            return False
        if whole is not None:
            self.damaged.pop(whole.ledger_key, None)
        return True

    @property
    def journal_damage(self) -> JournalError | None:
        """The first refused write no later write made good, if any."""
        return next(iter(self.damaged.values()), None)

    # -- the pipeline --------------------------------------------------------------------

    async def _process(self, it: _Item) -> ItemResult:
        entry = await self._entry_of(it)
        handle: JobHandle | None = None
        output: EditImageOutput | None = None
        if entry is not None:
            resumed = await self._resume(it, entry)
            if isinstance(resumed, ItemResult):
                return resumed
            if isinstance(resumed, JobHandle):
                handle = resumed
            elif isinstance(resumed, EditImageOutput):
                output = resumed
        if handle is None and output is None:
            refused = self._refuse_submit(it)
            if refused is not None:
                return refused
            it.wire = await self._resolve(it)
        if output is None:
            output = await self._jobs(it, handle, resumed_from=entry)
        return await self._finish(it, output)

    async def _entry_of(self, it: _Item) -> JournalEntry | None:
        """The item's row; for an item without a key, a schema-1 row the command line wrote
        under a name then, which the item takes over (so an upgrade pays nothing again)."""
        if self.journal is None:
            return None
        if self.journal.shared:
            claim = await self.journal.claim(it.ledger_key)
            if claim.held_by is not None:
                raise _Held(claim.held_by)
            it.claimed = claim.entry is None or claim.entry.state is not JournalState.DOWNLOADED
            if claim.entry is None or claim.entry.state is JournalState.PENDING:
                return None  # claimed, and nothing was done for it yet
            return claim.entry
        known = self.journaled_keys
        # A clash of hashes only costs the read.
        if known is None or hash(it.ledger_key) in known:
            entry = await self.journal.get(it.ledger_key)
        else:
            entry = None
        # Repeats (``fingerprint~2``) too: schema 1 named each of them, and paid for each.
        if (
            entry is None
            and it.fingerprint is not None
            and it.ledger_key.partition("~")[0] == it.fingerprint
        ):
            entry = await self.journal.legacy_row(it.fingerprint, self.legacy_taken)
            if entry is not None:
                self.legacy_taken.add(entry.key)
                it.ledger_key = entry.key
        return entry

    def _refuse_submit(self, it: _Item) -> ItemResult | None:
        """NOT_SUBMITTED when the journal broke or the budget would be crossed, else None."""
        if self.ledger_error is not None or self.account_error is not None:
            error = self.ledger_error or self.account_error
            return it.result(ItemState.NOT_SUBMITTED, error=error)
        try:
            self.budget.reserve(it.cost)
        except BudgetExceededError as exc:
            return it.result(ItemState.NOT_SUBMITTED, error=exc)
        return None

    async def _resolve(self, it: _Item) -> EditImageInput:
        if it.wire is None:
            it.wire = it.input
            if not it.wire.is_resolved:  # bounded by the client's Limits.uploads
                it.wire = await self.uploader.resolve_input(it.wire)
        return it.wire

    async def _jobs(
        self, it: _Item, handle: JobHandle | None, *, resumed_from: JournalEntry | None
    ) -> EditImageOutput:
        """Follow ``handle`` (or submit a job) to its output, with job retries."""
        while True:
            # On a shared ledger, following a job an earlier worker submitted takes no slot:
            # the slots may all be waiting for room under max_in_flight that only this job's
            # end can make.
            follow_only = handle is not None and self.shared
            try:
                async with _no_slot() if follow_only else self.jobs.slot() as epoch:
                    try:
                        if handle is None:
                            handle = await self._submit(it, epoch)
                        elif resumed_from is not None:  # in flight again, paid for before
                            await self.emit(
                                ItemReattached(
                                    key=it.key, request_id=handle.request_id, attempt=it.attempts
                                )
                            )
                        return await self._follow(it, handle, resumed=resumed_from is not None)
                    except BaseException as exc:
                        # The batch being left, or a callback that raised: the job must not
                        # run on unwatched. A failure to follow the job (a garbled status, the
                        # network) is no reason to cancel it: its row keeps it re-attachable.
                        # (A closed client's cancel is its on-close hook's: see _follow.)
                        if (
                            it.live is not None
                            and self.core.open
                            and not isinstance(exc, FalEditError)
                        ):
                            leaving = isinstance(exc, anyio.get_cancelled_exc_class())
                            with anyio.CancelScope(shield=True):
                                await self._cancel_live(it, it.live, leaving=leaving)
                        raise
            except JobFailedError as exc:
                if it.attempts - it.retry_base > self.job_retries or not _worth_retrying(exc):
                    raise
            except JobCancelledError:
                # A job of an earlier run that fal confirmed cancelled (this batch asked, and
                # its row may not say so: the write was refused; or the dashboard did): the
                # item was never finished, so it is submitted again now, as a 'cancelled'
                # row is. A job of this run cancelled from elsewhere is reported cancelled.
                if resumed_from is None:
                    raise
                if self.journal is not None:
                    await self._write(self.journal.record_cancelled(it.ledger_key), short=it)
            # A second job is a second payment: the budget must cover it too. A refusal here
            # leaves the failed job's row as it is, so a re-run with more budget retries it.
            if self.ledger_error is not None:
                raise self.ledger_error
            self.budget.reserve(it.cost)
            await self._resolve(it)
            handle, resumed_from = None, None

    async def _submit(self, it: _Item, epoch: int) -> JobHandle:
        if self.account_error is not None:  # items that were waiting for a slot meanwhile
            self.account_refused.add(it.ledger_key)
            raise self.account_error
        if it.request_id is not None and it.request_id not in it.past_ids:
            it.past_ids = (*it.past_ids, it.request_id)  # the last attempt's job
        it.attempts += 1
        options = self._options_for(it)
        assert it.wire is not None
        it.sent_at, it.start_timeout = time.time(), options.get("start_timeout")
        body = input_to_wire(it.wire)  # once: journaled as sent, then sent
        if self.journal is not None:
            try:
                await self.journal.record_submitting(
                    it.ledger_key,
                    endpoint=self.endpoint,
                    input=it.description,
                    attempts=it.attempts,
                    cost=it.cost,
                    max_in_flight=self.max_in_flight,
                    sent_body=body,
                    start_timeout=it.start_timeout,
                    past_ids=it.past_ids,
                )
            except LeaseLost:
                # Another worker has the item now: nothing was sent, nothing is owed.
                it.attempts -= 1
                it.claimed = False
                self.budget.committed -= it.cost
                raise
            except JournalError as exc:
                self.ledger_error = self.ledger_error or exc
                it.attempts -= 1
                raise

        def on_retry(kind: RetryKind) -> None:
            if kind == "rate_limit":
                self.jobs.rate_limited(epoch)

        assert it.wire is not None
        try:
            handle = await submit(
                self.core,
                self.uploader,
                it.wire,
                on_retry=on_retry,
                on_accepted=lambda h: self._accepted(it, h),
                cancel_on_exit=False,
                on_closed=functools.partial(self._on_close, it),
                body=body,
                **options,
            )
        except FalEditError as exc:
            return await self._submit_failed(it, exc)
        except ClientClosedError:
            # The client was closed under the batch: the core refuses a request before it
            # leaves, so with no answer taken nothing was queued (unless ambiguous failures
            # are resent), and the row says so: a rerun submits the item, not "unknown".
            if it.live is None and not self.core.config.retry.retry_ambiguous_submit:
                if self.journal is not None:
                    with anyio.CancelScope(shield=True):
                        await self._write(self.journal.record_unsent(it.ledger_key), short=it)
            raise
        except anyio.get_cancelled_exc_class():
            # Each POST is shielded, so a cancellation lands between them: with no answer taken
            # (it.live unset), every POST so far was refused in a way that queued nothing (a
            # 429 waiting out its Retry-After), unless ambiguous failures are retried.
            if it.live is None and not self.core.config.retry.retry_ambiguous_submit:
                if self.journal is not None:
                    with anyio.CancelScope(shield=True):
                        await self._write(self.journal.record_unsent(it.ledger_key), short=it)
            raise
        self.jobs.succeeded()
        if self.on_event is not None:  # nobody listens: no event to build
            await self.emit(
                ItemSubmitted(key=it.key, request_id=handle.request_id, attempt=it.attempts)
            )
        return handle

    async def _accepted(self, it: _Item, handle: JobHandle) -> None:
        """fal answered the submit: keep the request id before anything else can happen."""
        it.live, it.request_id, it.accepted = handle, handle.request_id, it.accepted + 1
        if await self._owned_elsewhere(it, handle.request_id):
            # A server that gives two submits one id: the job is the first item's.
            it.live, it.unknown = None, True
            error = ProtocolError(
                "fal answered this submit with a request id another item already has",
                request_id=handle.request_id,
            )
            if self.journal is not None:
                await self._write(self.journal.record_unknown(it.ledger_key, error), short=it)
            raise error
        self.owned_ids.add(hash(handle.request_id))
        if self.journal is not None:
            # Refused, the row stays "submitting", so a re-run reports it instead of paying
            # again; this run still follows the job and delivers its output (and writes its
            # id again with the output, should the disk have room by then).
            write = self.journal.record_submitted(it.ledger_key, handle.urls, attempts=it.attempts)
            it.recorded = await self._write(write, short=it)

    async def _owned_elsewhere(self, it: _Item, request_id: str) -> bool:
        """True when another item of this batch, or another row, holds ``request_id``.

        In memory (no journal query per submit): the rows' ids are read once by ``preload``.
        """
        if hash(request_id) in self.owned_ids:
            return True
        if self.journal is not None and self.journal.shared:
            try:  # every worker's rows: another may have been given this id
                owner = await self.journal.owner_of(request_id)
            except JournalError:
                owner = None
            return owner is not None and owner != it.ledger_key
        owner = self.journaled_ids.get(request_id)
        return owner is not None and owner != it.ledger_key

    async def _submit_failed(self, it: _Item, exc: FalEditError) -> JobHandle:
        """Record what a failed submit proves, then raise; or re-attach to the job it made."""
        journal = self.journal
        if isinstance(exc, AuthError):
            self.account_error = self.account_error or exc
        if submit_never_queued(exc):
            it.attempts -= 1
            if journal is not None:
                await self._write(journal.record_unsent(it.ledger_key, exc), short=it)
            raise exc
        request_id = exc.request_id if isinstance(exc, APIError) else None
        it.unknown = True
        named = None
        if request_id and not await self._owned_elsewhere(it, request_id):
            it.request_id = request_id  # another item's id is never this item's
            with contextlib.suppress(InputError):  # a request id no URL can hold
                named = attach(self.core, request_id, self.endpoint)
        if journal is not None:  # first: should this run end while fal is asked about it
            urls = named.urls if named is not None else None
            await self._write(journal.record_unknown(it.ledger_key, exc, urls=urls), short=it)
        if named is None and self.tracked:
            named = await self._tagged_job(it)
        if named is not None:
            # fal named the job in its error answer (or its webhook did): it may exist, and
            # then it is ours.
            handle = named
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(self.core.config.timeouts.cancel),
            ):
                try:
                    await handle.status()
                except FalEditError:
                    pass
                else:
                    it.unknown = False
                    await self._accepted(it, handle)
                    return handle
        raise exc

    async def _tagged_job(self, it: _Item) -> JobHandle | None:
        """The job a webhook tagged with this item and attempt names, waited for until the
        start-timeout bound: a lost answer's job announces itself when it ends."""
        assert self.journal is not None
        bound = self._bound(it)
        if bound is None:
            return None
        found = await await_tagged(
            self.journal, it.ledger_key, it.attempts, until=bound, poll=self.policy.ledger_poll
        )
        ids = {e.request_id for e in found}
        if len(ids) != 1:
            return None  # none (the next run reconciles it), or several: never guess
        (request_id,) = ids
        if await self._owned_elsewhere(it, request_id):
            return None
        with contextlib.suppress(InputError):
            return attach(self.core, request_id, self.endpoint)
        return None

    async def _follow(self, it: _Item, handle: JobHandle, *, resumed: bool) -> EditImageOutput:
        it.live, it.request_id = handle, handle.request_id
        progress = _Progress(self, it.key, handle.request_id)
        bound = self._bound(it)
        try:
            if self.tracked and bound is not None:
                assert self.journal is not None
                # The webhook comes through the journal, not the client: should the client
                # be closed meanwhile, stop waiting and cancel the job, as below.
                waiting = anyio.CancelScope()

                async def on_close() -> None:
                    waiting.cancel()
                    await self._on_close(it, handle)

                with self.core.on_close(on_close), waiting:
                    output = await await_webhook(
                        self.journal,
                        handle,
                        bound=bound,
                        poll=self.policy.ledger_poll,
                        ask=resumed,
                    )
                if waiting.cancelled_caught:  # closed under it: ClientClosedError, as below
                    self.core.check_open()
                it.live = None
            else:
                # Should the client be closed meanwhile, the job is cancelled on fal first
                # (and what fal answers recorded), as a single edit's wait does.
                with self.core.on_close(functools.partial(self._on_close, it, handle)):
                    # Log lines reach nobody but an on_event listener: without one, ask none.
                    completed = await handle.wait(
                        on_update=progress.update,
                        cancel_on_exit=False,
                        logs=self.on_event is not None,
                    )
                it.live = None  # finished on fal: nothing to cancel any more
                output = await handle.fetch_result(completed)
        except NotFoundError as exc:
            # A proxy's or a gateway's 404 page is not fal saying it forgot the job: the row
            # keeps its job for the next run, which pays nothing.
            if not resumed or not from_fal(exc.body):
                raise
            # fal forgot the job (its result expired) before any run fetched it: a clear end,
            # not a retry loop. --retry-failed submits it again.
            raise JobFailedError(
                request_id=handle.request_id,
                error="fal no longer knows this job: its result expired before it was fetched",
                error_type=EXPIRED,
            ) from exc
        # Before the output is journaled: a bad answer kept as the job's output would be
        # replayed by every rerun, where the row's job can be re-attached and asked again.
        check_image_count(it.input, output, handle.request_id)
        if self.journal is not None:
            name = self._claim_with(it, output)
            write = self.journal.record_completed(it.ledger_key, handle.urls, output, name=name)
            if not await self._write(write, short=it, whole=it):
                it.unsaved = (handle.urls, output, name)  # again once the files are in
                self.unsaved[it.ledger_key] = it
        if self.on_event is not None:  # nobody listens: no event to build
            await self.emit(ItemCompleted(key=it.key, request_id=handle.request_id))
        return output

    def _claim_with(self, it: _Item, output: EditImageOutput) -> tuple[str, str] | None:
        """Claim the item's output names as its job completes, so that the journal keeps
        them in the same write as the output, not one of their own: the folder and stem to
        record, or None (no folder; a claim the row has already; or one that fails, which
        ``_download`` makes, and reports, again)."""
        if self.download_to is None:
            return None
        try:
            it.claim = self.claim_name(it, len(output.images), it.request_id or "")
        except FalEditError:
            return None
        stem = it.claim[0]
        return None if stem == it.owned_stem else (str(self.download_to.absolute()), stem)

    async def _on_close(self, it: _Item, handle: JobHandle) -> None:
        if it.live is handle:
            await self._cancel_live(it, handle, leaving=True)

    async def _cancel_live(self, it: _Item, handle: JobHandle, *, leaving: bool) -> None:
        """Ask fal to cancel the item's job in flight, and keep what fal answered.

        ``leaving``: the batch was left early, so the item yields no result of its own.
        """
        it.live = None
        outcome = await handle.cancel_quietly()
        taken = outcome in (CancelOutcome.REQUESTED, CancelOutcome.OK)
        if leaving:
            self.cancels_accepted += taken
        if taken and self.journal is not None and it.recorded:
            # Best effort on fal: a running job may still finish; a resume polls it. (A row
            # that never got the job's id stays as it is: unknown to a resume, not cancelled.)
            # Refused, it misleads no rerun: a 'submitted' row's job is polled alike, and
            # submitted again once fal confirms it cancelled.
            await self._write(self.journal.record_cancel_requested(it.ledger_key))
        # Already completed, not found, or no answer: the row keeps its job to re-attach.
        if leaving:
            interrupted = ItemInterrupted(key=it.key, request_id=handle.request_id, cancel=outcome)
            with contextlib.suppress(Exception):  # a failing callback must not hide the exit
                await self.emit(interrupted)

    async def _finish(self, it: _Item, output: EditImageOutput) -> ItemResult:
        check_image_count(it.input, output, it.request_id)
        try:
            files = await self._download(it, output)
        except (FalEditError, anyio.get_cancelled_exc_class()):
            # Failed or cut short: a rerun downloads it, from the journal (fal's copy expires).
            with anyio.CancelScope(shield=True):
                await self._save_output(it)
            raise
        # Without the job and output it stands for, a ``downloaded`` row would read as a
        # lost submit to a rerun, not as a done item: none is written then.
        if await self._save_output(it) and self.download_to is not None:
            await self._save_files(it, files)
        return it.result(ItemState.COMPLETED, output=output, files=files)

    async def _save_output(self, it: _Item) -> bool:
        """Write again an output whose ``completed`` write was refused (a full disk, say),
        now that its download is over. True when the item's row holds its output."""
        if self.journal is None:
            return False
        if it.unsaved is None:
            return True
        urls, output, name = it.unsaved
        write = self.journal.record_completed(it.ledger_key, urls, output, name=name)
        if not await self._write(write, short=it, whole=it):
            return False
        it.unsaved = None
        return True

    async def _save_files(self, it: _Item, files: Sequence[DownloadedFile]) -> None:
        """Journal the item's files (its row holds its output already). Refused, the row
        stays ``completed`` without them (a rerun that finds fal's copy expired cannot
        fetch them again, nor know them for its own): tried once more as the batch closes."""
        assert self.journal is not None
        write = self.journal.record_downloaded(it.ledger_key, files)
        if await self._write(write, short=it, whole=it):
            it.unfiled = None
        else:
            it.unfiled = files
            self.unsaved[it.ledger_key] = it

    async def save_unsaved(self) -> None:
        """As the batch closes: a last try at the outputs, and then the files, whose writes
        the journal refused (the disk may have room by now), so that a rerun finds them in
        the journal rather than fal's copy expired. Nothing else is written for those items
        after those writes, so a late one never goes over a newer one. (On a shared ledger
        the item's lease is released by now, and another worker may have moved its row on:
        nothing is written late there, and the damage stays reported.)"""
        if self.journal is None or self.journal.shared:
            return
        with anyio.CancelScope(shield=True):
            for it in list(self.unsaved.values()):
                if await self._save_output(it) and it.unfiled is not None:
                    await self._save_files(it, it.unfiled)

    # -- resuming from the journal -------------------------------------------------------

    async def _resume(
        self, it: _Item, entry: JournalEntry
    ) -> ItemResult | JobHandle | EditImageOutput | None:
        """Go on from a journaled row without paying again.

        Returns the item's result, a job to follow, an output to download, or None when the
        item is to be submitted (again).
        """
        state = entry.state
        it.attempts = entry.attempts
        it.resumed = True
        it.past_ids, it.sent_at = entry.past_ids, entry.sent_at
        it.start_timeout = entry.start_timeout
        if state is JournalState.AMBIGUOUS:
            # Two or more jobs may be this item's: never a third, whatever was asked.
            ambiguous = UnknownSubmitError(
                entry.error or "ambiguous", request_id=None, ambiguous=True
            )
            await self.emit(ItemFailed(key=it.key, request_id=None, error=ambiguous))
            return it.result(ItemState.UNKNOWN, error=ambiguous)
        if entry.request_id is not None or state.has_job:
            # The budget counted this row when the batch started (Runner.preload).
            it.request_id, it.accepted = entry.request_id, entry.attempts
        if state in (JournalState.CANCELLED, JournalState.UNSENT):
            return None
        holders = self.twice_held.get(entry.request_id or "")
        if holders and state is not JournalState.FAILED:
            # One job is one item's, and which one is not known: neither follows it nor takes
            # the output a row keeps of it (one edit's bytes for two), and neither pays again.
            it.unknown = True
            others = ", ".join(repr(k) for k in holders if k != entry.key)
            held = JournalError(
                f"journal rows {entry.key!r} and {others} all name job {entry.request_id}, "
                "which is one item's: the journal was edited or its rows copied; clear the "
                "job from the rows that did not submit it, or restore the journal from a copy"
            )
            await self.emit(ItemFailed(key=it.key, request_id=entry.request_id, error=held))
            return it.result(ItemState.UNKNOWN, error=held)
        if state.has_job and entry.urls is None and entry.output is None:
            state = JournalState.UNKNOWN  # a job state that never got its job's id
        if state in (JournalState.UNKNOWN, JournalState.SUBMITTING):
            if entry.urls is not None and await self._still_on_fal(entry):
                it.recorded = True
                return self._handle_of(entry)  # fal knows the job after all: follow it
            if self.resubmit_unknown:
                return None
            unknown = UnknownSubmitError(
                entry.error or "a submit was sent, but its answer never arrived",
                request_id=entry.request_id,
            )
            await self.emit(ItemFailed(key=it.key, request_id=entry.request_id, error=unknown))
            return it.result(ItemState.UNKNOWN, error=unknown)
        if state is JournalState.FAILED:
            if self.retry_failed:
                it.retry_base = it.attempts
                return None
            failed = _replayed_failure(entry)
            await self.emit(ItemFailed(key=it.key, request_id=it.request_id, error=failed))
            return it.result(ItemState.FAILED, error=failed)
        it.owned_stem = self._owned_stem(entry)
        it.owned_files = self._owned_files(entry)
        if entry.output is not None:
            output = parse(entry.output, EditImageOutput)
            if state is JournalState.DOWNLOADED and self.shared and entry.updated_at >= self.began:
                # Downloaded by another worker of this batch while it ran: done, wherever
                # that worker put the files. (Rows from before the batch began are a rerun's
                # to fetch into this folder, as with one process.)
                return it.result(ItemState.COMPLETED, output=output, files=entry.files)
            if self.download_to is None or await self._files_in_place(entry, output):
                return it.result(ItemState.COMPLETED, output=output, files=entry.files)
            changed = bool(it.owned_files) and await anyio.to_thread.run_sync(_changed, entry.files)
            if changed:
                # Something else is at one of its names now (an edit, a broken file, any
                # image): never replaced on a guess, so the item takes new names, at once,
                # rather than after a download that would clash.
                it.owned_stem, it.owned_files = None, frozenset()
            return output  # fetched before: download it here, whatever folder a run used
        if entry.urls is not None:
            it.recorded = True
            return self._handle_of(entry)
        return None

    def _handle_of(self, entry: JournalEntry) -> JobHandle:
        assert entry.urls is not None
        self.owned_ids.add(hash(entry.urls.request_id))
        endpoint = EndpointId.parse(entry.endpoint or DEFAULT_ENDPOINT)
        return JobHandle(
            request_id=entry.urls.request_id,
            endpoint=endpoint,
            # Checked again: a journal may hold URLs an older version trusted.
            urls=trusted_job_urls(self.core.config.queue_url, endpoint, entry.urls),
            core=self.core,
        )

    async def _still_on_fal(self, entry: JournalEntry) -> bool:
        """True when fal answers for the job an unknown row names."""
        try:
            await self._handle_of(entry).status()
        except FalEditError:
            return False
        return True

    async def preload(self) -> None:
        """Before any new submit: count what the journal says was spent, and learn which row
        holds which request id (one read of the journal, instead of a query per submit)."""
        if self.journal is None:
            return
        entries = await self.journal.entries()
        self.journaled_ids = {e.request_id: e.key for e in entries if e.request_id}
        self.twice_held = jobs_named_twice(entries)
        self.budget.committed += spent(entries)
        if not self.journal.shared:  # nobody else adds rows while this batch runs
            self.journaled_keys = IntSet()
            for entry in entries:
                self.journaled_keys.add(hash(entry.key))

    def _owned_stem(self, entry: JournalEntry) -> str | None:
        """The stem an earlier run claimed (or wrote) for this item in this folder, if any."""
        if self.download_to is None:
            return None
        folder = self.download_to.absolute()
        if entry.stem is not None and entry.folder == str(folder):
            return entry.stem
        if entry.files and entry.files[0].path.parent == folder:
            return stem_of_output(entry.files[0].path.name)
        return None

    def _owned_files(self, entry: JournalEntry) -> frozenset[str]:
        """The names of the files the journal says this item's download wrote in this folder
        (all of them, or the ones that arrived when others failed)."""
        if self.download_to is None:
            return frozenset()
        folder = self.download_to.absolute()
        return frozenset(f.path.name for f in entry.files if f.path.parent == folder)

    async def _files_in_place(self, entry: JournalEntry, output: EditImageOutput) -> bool:
        """True when every output is on disk in this batch's folder, as it was written."""
        if entry.state is not JournalState.DOWNLOADED or self.download_to is None:
            return False
        if len(entry.files) != len(output.images):
            return False
        folder = self.download_to.absolute()
        if any(f.path.parent != folder for f in entry.files):
            return False
        return await anyio.to_thread.run_sync(_intact, entry.files)

    async def _download(self, it: _Item, output: EditImageOutput) -> tuple[DownloadedFile, ...]:
        if self.download_to is None:
            return ()
        for _ in range(_CLAIMS):
            if it.claim is not None:  # claimed as the job completed, journaled with it
                (stem, names), it.claim = it.claim, None
            else:
                stem, names = self.claim_name(it, len(output.images), it.request_id or "")
                if self.journal is not None and stem != it.owned_stem:
                    folder = str(self.download_to.absolute())
                    await self._write(
                        self.journal.record_name(it.ledger_key, folder, stem), short=it
                    )
            # The files this attempt publishes: the only ones a clash may delete again.
            published: list[FileIdentity] = []
            ours = it.owned_files
            if stem == it.owned_stem:
                # A run killed between publishing a file and recording it left it at the
                # name it claimed, unrecorded: one holding exactly the bytes this job gives
                # is that file, and kept (any other is someone else's: a clash, as before).
                ours = ours | {f"{n}.{ext}" for n in names for ext in EXTENSIONS.values()}
            done = await download_outcomes(
                self.core,
                output.images,
                self.download_to,
                stem,
                names=names,
                # A claimed name is never written over a file another run wrote meanwhile,
                # even one this item claimed before; a file there with exactly this job's
                # bytes is kept as its own.
                replace=self.overwrite,
                ours=ours,
                published=published,
                limiter=self.downloads,
                max_bytes=self.core.config.limits.max_output_bytes,
                checksum=self.journal is not None,  # the journal re-checks files on a re-run
            )
            if not any(_clashed(o) for o in done):
                break
            # Another run in this folder wrote one of these names since the batch listed it:
            # give up the names (deleting what this attempt wrote, which is ours) and claim
            # new ones, so both runs keep their outputs.
            await anyio.to_thread.run_sync(_unlink_all, done, frozenset(published))
            self.foreign = self.foreign | {fold_name(n) for n in names}
            it.owned_stem, it.owned_files = None, frozenset()
        files = tuple(f for f in done if isinstance(f, DownloadedFile))
        for outcome in done:
            if isinstance(outcome, DownloadError):
                # The item fails; its files that did arrive stay, journaled so that a rerun
                # knows them for its own and finishes the set under the same name.
                if files and self.journal is not None:
                    # Not a damage when refused: the claim the row holds covers these files.
                    await self._write(self.journal.record_files(it.ledger_key, files))
                raise outcome
        if self.on_event is not None:  # nobody listens: no event to build
            await self.emit(ItemDownloaded(key=it.key, request_id=it.request_id or "", files=files))
        return files


#: Tries at claiming names an item's files can be written under, when other runs keep
#: writing into the same folder.
_CLAIMS = 3


def _clashed(outcome: DownloadedFile | DownloadError) -> bool:
    return isinstance(outcome, DownloadError) and isinstance(outcome.__cause__, FileExistsError)


def _unlink_all(
    done: Sequence[DownloadedFile | DownloadError], published: frozenset[FileIdentity]
) -> None:
    """Delete the files this attempt published, and nothing else: not a file that was there
    before it, nor one another writer has put at one of its names since."""
    for outcome in done:
        if isinstance(outcome, DownloadedFile):
            with contextlib.suppress(OSError):
                if file_identity(outcome.path.lstat()) in published:
                    outcome.path.unlink()


@asynccontextmanager
async def _no_slot() -> AsyncIterator[int]:
    yield 0


def _typed(exc: JobFailedError) -> JobFailedError:
    """``exc`` with the error type of its 422 body when fal sent no header for it, so the
    journal keeps the cause (``content_policy_violation``), not just the class name."""
    if exc.error_type is not None:
        return exc
    kinds = [str(e["type"]) for e in field_errors_of(exc.detail) if e.get("type")]
    if not kinds:
        return exc
    return JobFailedError(
        request_id=exc.request_id,
        error=exc.error,
        error_type=kinds[0],
        detail=exc.detail,
        status=exc.status,
        retryable=exc.retryable,
        timeout_type=exc.timeout_type,
    )


def _replayed_failure(entry: JournalEntry) -> JobFailedError:
    """The failure an earlier run recorded, as that run reported it: the journal keeps the
    error's whole text (its type and request id in it already) and its fal error type, or the
    class name when fal gave none, which is no error type."""
    request_id = entry.request_id or ""
    text = entry.error
    error_type = entry.error_type if entry.error_type != JobFailedError.__name__ else None
    if text is not None:
        text = text.removesuffix(f" (request_id={request_id})")
        if error_type:
            text = text.replace(f" [{error_type}]", "", 1)
    return JobFailedError(request_id=request_id, error=text, error_type=error_type)


def _slot(identity: str) -> int:
    """64 bits of an item's identity, to count its repeats in: a batch of 100,000 items keeps
    100,000 of these. As wide as the content fingerprint itself, and stable across runs (a
    clash would number an item as a repeat, which the ledger would then not recognise)."""
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "big")


def _internal(exc: Exception) -> InternalError:
    error = InternalError(f"unexpected {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _changed(files: Sequence[DownloadedFile]) -> bool:
    """True when one of the journaled files is there with other bytes (or is no file)."""
    for file in files:
        try:
            file.path.lstat()
        except FileNotFoundError:
            continue  # gone: its name is free again for the item
        except OSError:
            return True
        if not holds(file.path, file.size, file.sha256):
            return True
    return False


def _intact(files: Sequence[DownloadedFile]) -> bool:
    """True when every journaled file is still on disk with its size and checksum."""
    return all(holds(f.path, f.size, f.sha256) for f in files)


@attrs.define
class _Progress:
    """Turns one job's status updates into progress events."""

    runner: Runner
    key: str
    request_id: str
    started: bool = False

    async def update(self, update: JobStatus) -> None:
        if self.runner.on_event is None:
            return  # nobody listens: build no events
        key, rid, emit = self.key, self.request_id, self.runner.emit
        if isinstance(update, Queued):
            await emit(ItemQueued(key=key, request_id=rid, position=update.position))
        if isinstance(update, InProgress | Completed) and not self.started:
            self.started = True
            await emit(ItemStarted(key=key, request_id=rid))
        if isinstance(update, InProgress | Completed):
            for entry in update.logs:
                await emit(ItemLog(key=key, request_id=rid, entry=entry))


def _worth_retrying(exc: JobFailedError) -> bool:
    """Infrastructure failures get another job; the model's own refusals never do."""
    return job_retryable(
        status=exc.status,
        error_type=exc.error_type,
        timeout_type=exc.timeout_type,
        header=exc.retryable,
    )
