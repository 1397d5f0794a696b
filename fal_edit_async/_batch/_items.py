"""What a batch is made of: its items, their keys, and how each one ends.

Plain data and pure functions, no I/O: the runner produces these.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from .._config import Limits
from .._converter import input_from_dict, to_wire
from .._exceptions import FalEditError, InputError
from .._models import DownloadedFile, EditImageInput, EditImageOutput, SubmitOptions
from .._pricing import estimate_cost
from .._protocol import check_submit_options
from ._events import BatchEvent

__all__ = [
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
    "split_item",
]

if TYPE_CHECKING:
    from ._journal import Journal

#: What a batch accepts per item: an input (or a JSON-like mapping of one), or a key with it.
BatchItem: TypeAlias = (
    EditImageInput | Mapping[str, Any] | tuple[str, EditImageInput | Mapping[str, Any]]
)
#: Called with each progress event; may be a plain function or a coroutine function.
EventCallback: TypeAlias = Callable[[BatchEvent], Any]


class ItemState(StrEnum):
    """How an item ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOT_SUBMITTED = "not_submitted"


@attrs.frozen(kw_only=True)
class ItemResult:
    """One item's outcome: its output and files, or the error that stopped it.

    ``key`` is the caller's key; for an unkeyed item it is the input's fingerprint
    (:func:`item_key`) in a journaled batch, else ``item-<index>``.
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

    ``cancelled`` counts every cancelled item; ``cancelled_on_exit`` those whose fal job the
    batch itself cancelled when it was left early (they yield no result).
    """

    total: int
    completed: int
    failed: int
    cancelled: int
    cancelled_on_exit: int
    not_submitted: int
    bytes_downloaded: int
    estimated_cost: Decimal
    job_retries: int
    request_retries: Mapping[str, int]
    concurrency: int
    lowest_concurrency: int
    elapsed: float

    def __str__(self) -> str:
        return (
            f"{self.completed} completed, {self.failed} failed, {self.cancelled} cancelled, "
            f"{self.not_submitted} not submitted of {self.total}; "
            f"{self.bytes_downloaded / 1e6:.1f} MB; ~${self.estimated_cost}; "
            f"{self.elapsed:.1f} s; concurrency settled at {self.concurrency}"
        )


def describe_input(input: EditImageInput) -> dict[str, Any]:
    """An input as JSON-ready data, with files by resolved path and bytes by their hash."""
    wire: dict[str, Any] = {
        a.name: to_wire(getattr(input, a.name)) for a in attrs.fields(type(input))
    }
    wire["image_urls"] = [_source_id(s) for s in input.image_urls]
    return wire


def fingerprint(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def item_key(input: EditImageInput) -> str:
    """A stable key for an input: a hash of its options and image sources.

    Files are keyed by their resolved path and bytes by their hash, so the same manifest run
    again yields the same keys, and any change to the prompt or an option a new one.
    """
    return fingerprint(describe_input(input))


def _source_id(source: str | os.PathLike[str] | bytes) -> str:
    if isinstance(source, bytes):
        return "sha256:" + hashlib.sha256(source).hexdigest()
    if isinstance(source, str):
        return source
    return "file:" + str(Path(source).resolve())


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
        key, _, raw = split_item(item)
        try:
            input = raw if isinstance(raw, EditImageInput) else input_from_dict(raw)
        except InputError as exc:
            invalid.append((key or f"item-{index}", exc))
            continue
        estimate = estimate_cost(input)
        total += estimate.usd
        count += 1
        worst += estimate.worst_case
    return BatchEstimate(total_usd=total, items=count, worst_case=worst, invalid=tuple(invalid))


def split_item(item: Any) -> tuple[str | None, bool, Any]:
    """An item as (caller's key or None, whether it was keyed, the input or its mapping)."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0], True, item[1]
    return None, False, item


@attrs.frozen(kw_only=True)
class BatchSettings:
    """How one batch runs: everything ``edit_many`` was given, checked and with defaults."""

    concurrency: int
    downloads: int
    download_to: Path | None
    job_retries: int
    budget: Decimal | None
    journal: str | os.PathLike[str] | Journal | None
    adaptive: bool
    on_event: EventCallback | None
    submit_options: SubmitOptions

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
        journal: str | os.PathLike[str] | Journal | None,
        adaptive: bool,
        on_event: EventCallback | None,
        submit_options: SubmitOptions,
    ) -> BatchSettings:
        """Check every setting before anything is sent; a bad one is an :class:`InputError`."""
        jobs = limits.jobs if concurrency is None else _count("concurrency", concurrency, 1)
        files = limits.downloads if downloads is None else _count("downloads", downloads, 1)
        needed = jobs + files + limits.uploads
        if needed > limits.max_connections:
            # Jobs would queue for sockets behind each other's status streams: say so up front.
            most = limits.max_connections - files - limits.uploads
            raise InputError(
                "concurrency",
                concurrency,
                f"at most {most} with Limits.max_connections={limits.max_connections} "
                "(raise it to go higher)",
            )
        return cls(
            concurrency=jobs,
            downloads=files,
            download_to=None if download_to is None else Path(download_to),
            job_retries=_count("job_retries", job_retries, 0),
            budget=_budget(budget),
            journal=journal,
            adaptive=adaptive,
            on_event=on_event,
            submit_options=check_submit_options(submit_options, "edit_many"),
        )


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
