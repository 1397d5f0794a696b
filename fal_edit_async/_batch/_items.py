"""What a batch is made of: its items, their keys, and how each one ends.

Plain data and pure functions, no I/O: the runner produces these.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from .._config import Limits
from .._converter import input_from_dict, to_wire
from .._endpoint import DEFAULT_ENDPOINT, EndpointId
from .._exceptions import FalEditError, InputError, JournalError
from .._models import DownloadedFile, EditImageInput, EditImageOutput, SubmitOptions
from .._name_template import DEFAULT_NAME_TEMPLATE, DEFAULT_NAMES, NameTemplate
from .._pricing import estimate_cost
from .._protocol import check_submit_options
from .._reconcile_models import ReconcilePolicy
from ._events import BatchEvent

__all__ = [
    "EditItem",
    "BatchEstimate",
    "BatchItem",
    "BatchSettings",
    "BatchSummary",
    "EventCallback",
    "ItemResult",
    "ItemState",
    "describe_input",
    "estimate_batch",
    "fingerprint",
    "item_key",
    "reads_files",
    "split_item",
]

if TYPE_CHECKING:
    from ._ledger import JournalBackend


@attrs.frozen(kw_only=True)
class EditItem:
    """One batch item with its identity and its name made explicit.

    ``key`` is your stable identity for the item (a product SKU, a file id): a journal knows
    the item by it, together with a fingerprint of the input, so a changed prompt is a new
    item. Leave it None and the item is known by its content alone. ``name`` is what the item
    is called in events and results and what its output files are named after; it is not an
    identity, so names may change between runs (the command line derives them from file
    names) without anything being paid again. It defaults to ``key``.
    """

    input: EditImageInput | Mapping[str, Any]
    key: str | None = None
    name: str | None = None


#: What a batch accepts per item: an input (or a JSON-like mapping of one), a ``(key, input)``
#: pair, or an :class:`EditItem`.
BatchItem: TypeAlias = (
    EditImageInput | Mapping[str, Any] | tuple[str, EditImageInput | Mapping[str, Any]] | EditItem
)
#: Called with each progress event; may be a plain function or a coroutine function.
EventCallback: TypeAlias = Callable[[BatchEvent], Any]


class ItemState(StrEnum):
    """How an item ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOT_SUBMITTED = "not_submitted"
    #: A submit was sent but its answer was lost: fal may have queued (and billed) the job.
    UNKNOWN = "unknown"
    #: Left in flight when the batch was left early, and fal did not confirm a cancel (see
    #: :class:`ItemInterrupted`); a batch yields no result for these, a report may.
    INTERRUPTED = "interrupted"


@attrs.frozen(kw_only=True)
class ItemResult:
    """One item's outcome: its output and files, or the error that stopped it.

    ``key`` is what the item is called: its name or key, or for an item given as a bare
    input its content key (:func:`item_key`, with ``~2``, ``~3``... for repeats of the same
    input in one batch).
    """

    key: str
    index: int
    state: ItemState
    input: EditImageInput | None = None
    request_id: str | None = None
    output: EditImageOutput | None = None
    files: tuple[DownloadedFile, ...] = ()
    error: FalEditError | None = None
    attempts: int = 0
    cost: Decimal = Decimal(0)
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """True when the item completed (and downloaded, if asked)."""
        return self.state is ItemState.COMPLETED


@attrs.frozen(kw_only=True)
class BatchSummary:
    """What a batch did: counts, bytes, estimated cost, retries, and the concurrency it found.

    Items whose job was in flight when the batch was left early yield no result; they are
    ``interrupted``. The batch asked fal to cancel each of those jobs, and
    ``cancelled_on_exit`` counts the cancels fal accepted (a job that had already finished,
    or whose cancel went unanswered, stays re-attachable through the journal). ``cancelled``
    counts those plus the items whose job fal reported cancelled.

    ``journal_error`` is the first write the journal refused (a full disk, say) that no later
    write made good, or None. Once a write fails no new submit is sent, and the items already
    on fal are followed and delivered all the same; but a row left short may not name its
    job, so a rerun can report it as a lost submit (a reconcile finds it in fal's history,
    by the request id this run yielded). A row that a later write made whole again (the
    job's output with its id, written after a failed ``submitted``) is not counted.
    """

    total: int
    completed: int
    failed: int
    cancelled: int
    cancelled_on_exit: int
    not_submitted: int
    unknown: int = 0
    interrupted: int = 0
    bytes_downloaded: int
    estimated_cost: Decimal
    job_retries: int
    request_retries: Mapping[str, int]
    concurrency: int
    lowest_concurrency: int
    elapsed: float
    journal_error: JournalError | None = None

    def __str__(self) -> str:
        unknown = f"{self.unknown} unknown, " if self.unknown else ""
        journal = f"; the journal failed: {self.journal_error}" if self.journal_error else ""
        return (
            f"{self.completed} completed, {self.failed} failed, {self.cancelled} cancelled, "
            f"{unknown}{self.not_submitted} not submitted of {self.total}; "
            f"{self.bytes_downloaded / 1e6:.1f} MB; ~${self.estimated_cost}; "
            f"{self.elapsed:.1f} s; concurrency settled at {self.concurrency}{journal}"
        )


def describe_input(input: EditImageInput, endpoint: str = DEFAULT_ENDPOINT) -> dict[str, Any]:
    """An input as JSON-ready data, with files by resolved path and bytes by their hash.

    The endpoint is part of it (the same input on another model is another item); the
    default endpoint is left out, so keys written before it counted stay the same.
    """
    wire: dict[str, Any] = {
        a.name: to_wire(getattr(input, a.name)) for a in attrs.fields(type(input))
    }
    wire["image_urls"] = [_source_id(s) for s in input.image_urls]
    endpoint = str(EndpointId.parse(endpoint))  # one spelling per endpoint
    if endpoint != DEFAULT_ENDPOINT:
        wire["endpoint"] = endpoint
    return wire


def fingerprint(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def item_key(input: EditImageInput, endpoint: str = DEFAULT_ENDPOINT) -> str:
    """A stable key for an input: a hash of its options, image sources and endpoint.

    Files are keyed by their resolved path and bytes by their hash, so the same manifest run
    again yields the same keys, and any change to the prompt or an option a new one.
    """
    return fingerprint(describe_input(input, endpoint))


#: Files larger than this are keyed by their path (no upload takes them; see Limits).
_MAX_HASHED = 256 * 2**20


def _source_id(source: str | os.PathLike[str] | bytes) -> str:
    """An image source by its content: bytes and files by their SHA-256 (a file renamed or
    moved is the same item, one rewritten in place is another), URLs as they are."""
    if isinstance(source, bytes):
        return "sha256:" + hashlib.sha256(source).hexdigest()
    if isinstance(source, str):
        return source
    path = Path(source)
    try:
        # Only a regular file of a size an upload accepts is read: a FIFO would block, and a
        # huge file will be refused anyway. The upload says why; the key keeps the path.
        st = path.stat()
        if stat.S_ISREG(st.st_mode) and st.st_size <= _MAX_HASHED:
            with path.open("rb") as f:
                return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        pass
    return "file:" + str(path.resolve())


def reads_files(input: EditImageInput) -> bool:
    """True when describing ``input`` reads files (so it belongs in a worker thread)."""
    return any(isinstance(s, os.PathLike) for s in input.image_urls)


@attrs.frozen(kw_only=True)
class BatchEstimate:
    """What a batch would cost, worked out before anything is sent (a dry run)."""

    total_usd: Decimal
    items: int
    worst_case: int
    invalid: tuple[tuple[str, InputError], ...] = ()

    def __str__(self) -> str:
        text = f"{self.items} items, estimated ${self.total_usd}"
        if self.worst_case:
            text += f" ({self.worst_case} priced at their worst case: quality or size is auto)"
        if self.invalid:
            text += f"; {len(self.invalid)} invalid items would fail before submitting"
        return text


def estimate_batch(items: Iterable[BatchItem]) -> BatchEstimate:
    """Price a batch without sending anything: the dry run behind ``--dry-run``.

    Invalid items are listed with their error rather than raised, as a batch would report
    them; they cost nothing.
    """
    total, count, worst = Decimal(0), 0, 0
    invalid: list[tuple[str, InputError]] = []
    for index, item in enumerate(items):
        _, name, raw = split_item(item)
        try:
            input = raw if isinstance(raw, EditImageInput) else input_from_dict(raw)
        except InputError as exc:
            invalid.append((name or f"item-{index}", exc))
            continue
        estimate = estimate_cost(input)
        total += estimate.usd
        count += 1
        worst += estimate.worst_case
    return BatchEstimate(total_usd=total, items=count, worst_case=worst, invalid=tuple(invalid))


def split_item(item: Any) -> tuple[str | None, str | None, Any]:
    """An item as (its identity key or None, its name or None, the input or its mapping)."""
    if isinstance(item, EditItem):
        return item.key, item.name or item.key, item.input
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[0], item[1]
    return None, None, item


@attrs.frozen(kw_only=True)
class BatchSettings:
    """How one batch runs: everything ``edit_many`` was given, checked and with defaults."""

    concurrency: int
    downloads: int
    download_to: Path | None
    job_retries: int
    budget: Decimal | None
    journal: str | os.PathLike[str] | JournalBackend | None
    adaptive: bool
    on_event: EventCallback | None
    submit_options: SubmitOptions
    resubmit_unknown: bool = False
    retry_failed: bool = False
    overwrite: bool = False
    names: NameTemplate = DEFAULT_NAMES
    #: Jobs in flight across every worker of a shared ledger (and this one's limit too).
    max_in_flight: int | None = None
    reconcile: ReconcilePolicy = attrs.field(factory=ReconcilePolicy)

    @classmethod
    def build(
        cls,
        limits: Limits,
        *,
        concurrency: int | None,
        downloads: int | None,
        download_to: str | os.PathLike[str] | None,
        job_retries: int,
        budget: float | Decimal | None,
        journal: str | os.PathLike[str] | JournalBackend | None,
        adaptive: bool,
        on_event: EventCallback | None,
        submit_options: SubmitOptions,
        resubmit_unknown: bool = False,
        retry_failed: bool = False,
        overwrite: bool = False,
        name_template: str | NameTemplate = DEFAULT_NAME_TEMPLATE,
        max_in_flight: int | None = None,
        reconcile: ReconcilePolicy | None = None,
    ) -> BatchSettings:
        """Check every setting before anything is sent; a bad one is an :class:`InputError`."""
        policy = ReconcilePolicy() if reconcile is None else reconcile
        if not isinstance(policy, ReconcilePolicy):
            raise InputError("reconcile", reconcile, "a ReconcilePolicy, or None")
        if policy.strict and resubmit_unknown:
            msg = "not resubmit_unknown=True with a strict policy, which never resubmits"
            raise InputError("reconcile", policy, msg)
        jobs = limits.jobs if concurrency is None else _count("concurrency", concurrency, 1)
        cap = None if max_in_flight is None else _count("max_in_flight", max_in_flight, 1)
        if cap is not None:
            jobs = min(jobs, cap)  # more than the whole fleet may have is never useful
        _check_journal(journal)
        files = limits.downloads if downloads is None else _count("downloads", downloads, 1)
        _check_sockets(limits, jobs, files, given=(concurrency, downloads))
        if on_event is not None and not callable(on_event):
            raise InputError("on_event", on_event, "a function taking a BatchEvent, or None")
        return cls(
            concurrency=jobs,
            downloads=files,
            download_to=_folder(download_to),
            job_retries=_count("job_retries", job_retries, 0),
            budget=_budget(budget),
            journal=journal,
            adaptive=adaptive,
            on_event=on_event,
            submit_options=check_submit_options(submit_options, "edit_many"),
            resubmit_unknown=bool(resubmit_unknown),
            retry_failed=bool(retry_failed),
            overwrite=bool(overwrite),
            names=(
                name_template
                if isinstance(name_template, NameTemplate)
                else NameTemplate.parse(name_template)
            ),
            max_in_flight=cap,
            reconcile=policy,
        )


def _check_journal(journal: object) -> None:
    from ._ledger import JournalBackend

    if journal is None or isinstance(journal, str | os.PathLike | JournalBackend):
        if isinstance(journal, str) and not journal:
            raise InputError("journal", journal, "a journal file, a postgresql:// address, or None")
        return
    raise InputError("journal", journal, "a journal file, a postgresql:// address, or None")


def _check_sockets(
    limits: Limits, jobs: int, files: int, *, given: tuple[int | None, int | None]
) -> None:
    """Refuse a batch whose jobs and downloads cannot all have a socket (jobs would queue
    behind each other's status streams), naming the setting the caller gave: of the two
    (``concurrency``, ``downloads``), the larger."""
    if jobs + files + limits.uploads <= limits.max_connections:
        return
    concurrency, downloads = given
    if downloads is not None and (concurrency is None or downloads > concurrency):
        field, value, most = "downloads", files, limits.max_connections - jobs - limits.uploads
    else:
        field, value, most = "concurrency", jobs, limits.max_connections - files - limits.uploads
    allowed = (
        f"at most {most} with Limits.max_connections={limits.max_connections} "
        "(raise it to go higher)"
    )
    raise InputError(field, value, allowed)


def _folder(value: str | os.PathLike[str] | None) -> Path | None:
    if value is None:
        return None
    # Path("") is Path("."): an empty string would put every output in the current directory.
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise InputError("download_to", value, "a folder path, or None")
    return Path(value)


def _count(field: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        allowed = "a positive whole number" if least else "zero or a positive whole number"
        raise InputError(field, value, allowed)
    return value


def _budget(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InputError("budget", value, "a number of US dollars")
    amount = Decimal(str(value))
    if not amount.is_finite() or amount < 0 or (isinstance(value, float) and math.isnan(value)):
        raise InputError("budget", value, "a finite, non-negative number of US dollars")
    return amount
