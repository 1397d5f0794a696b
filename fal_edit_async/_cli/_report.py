"""A run's progress, and the plain ways to show it: JSON lines for pipelines, text lines.

:class:`Progress` folds the batch's events and results into counts, active jobs, an ETA and
the cost so far; the reporters only render it. The rich live display (``_display``) is
a third reporter with the same methods.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol, TextIO

import attrs

from .. import (
    BatchEvent,
    BudgetExceededError,
    FalEditError,
    ItemCompleted,
    ItemDownloaded,
    ItemFailed,
    ItemLog,
    ItemQueued,
    ItemResult,
    ItemStarted,
    ItemState,
    ItemSubmitted,
    JobFailedError,
)

__all__ = [
    "ActiveJob",
    "JsonReporter",
    "LinesReporter",
    "Progress",
    "Reporter",
    "describe",
    "duration",
    "reason",
    "record",
]


@attrs.define
class ActiveJob:
    """A job on fal that has not finished: its state as last heard."""

    key: str
    request_id: str
    since: float
    state: str = "submitted"  # submitted, queued, running, downloading
    position: int | None = None


@attrs.define
class Progress:
    """Counts, active jobs, ETA and cost of a run, updated from events and results."""

    total: int
    estimates: Mapping[str, Decimal] = attrs.field(factory=dict)
    clock: Callable[[], float] = time.monotonic
    started: float = attrs.field(init=False)
    active: dict[str, ActiveJob] = attrs.field(factory=dict, init=False)
    states: Counter[ItemState] = attrs.field(factory=Counter, init=False)
    reasons: Counter[str] = attrs.field(factory=Counter, init=False)
    cost: Decimal = attrs.field(default=Decimal(0), init=False)
    resumed: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def on_event(self, event: BatchEvent) -> None:
        """Follow one job's state: submitted, queued at a position, running, downloading."""
        if isinstance(event, ItemSubmitted):
            self.active[event.key] = ActiveJob(event.key, event.request_id, self.clock())
        job = self.active.get(event.key)
        if job is None:
            return
        if isinstance(event, ItemQueued):
            job.state, job.position = "queued", event.position
        elif isinstance(event, ItemStarted):
            job.state, job.since = "running", self.clock()
        elif isinstance(event, ItemCompleted):
            job.state, job.since = "downloading", self.clock()
        elif isinstance(event, ItemDownloaded | ItemFailed):
            del self.active[event.key]

    def on_result(self, result: ItemResult) -> None:
        """Count a finished item (its job, if any, is no longer active)."""
        self.active.pop(result.key, None)
        self.states[result.state] += 1
        self.cost += result.cost
        self.resumed += bool(getattr(result, "resumed", False))
        if result.error is not None and result.state in (ItemState.FAILED, ItemState.NOT_SUBMITTED):
            self.reasons[reason(result.error)] += 1

    @property
    def finished(self) -> int:
        """Items that ended, whatever the outcome."""
        return sum(self.states.values())

    @property
    def done(self) -> int:
        """Items completed (and downloaded, when asked)."""
        return self.states[ItemState.COMPLETED]

    @property
    def failed(self) -> int:
        """Items that ended without a result: failed, cancelled or not submitted."""
        return self.finished - self.done

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.started

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None until an item has finished."""
        if not self.finished or self.finished >= self.total:
            return None
        return self.elapsed() / self.finished * (self.total - self.finished)

    def cost_so_far(self) -> Decimal:
        """Estimated USD of finished items plus the jobs on fal now (they will be paid)."""
        return self.cost + sum((self.estimates.get(k, Decimal(0)) for k in self.active), Decimal(0))

    def summary(self) -> str:
        """One line: done, failed (with reasons), cancelled, unknown, interrupted, cost, time."""
        parts = [
            f"{self.done} done" + (f" ({self.resumed} from the journal)" if self.resumed else "")
        ]
        apart = {
            state: self.states[state]
            for state in (ItemState.CANCELLED, ItemState.UNKNOWN, ItemState.INTERRUPTED)
        }
        failed = self.failed - sum(apart.values())
        if failed:
            why = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
            parts.append(f"{failed} failed" + (f" ({why})" if why else ""))
        parts += [f"{n} {state.value}" for state, n in apart.items() if n]
        if self.finished < self.total:
            parts.append(f"{self.total - self.finished} not started")
        return (
            f"{', '.join(parts)} of {self.total} · ~${self.cost:.2f} estimated"
            f" · {duration(self.elapsed())}"
        )


def reason(error: BaseException) -> str:
    """A short cause for the summary, shared by items that failed the same way."""
    if isinstance(error, BudgetExceededError):
        return "over budget"
    if isinstance(error, JobFailedError):
        return error.error_type or _field_error_type(error.detail) or "job failed"
    return type(error).__name__


def _field_error_type(body: object) -> str | None:
    """The first field error type in a fal error body; a string ``detail`` is a value_error."""
    # JobFailedError.detail is the raw body: read the 422 shape from it here rather than make
    # the library's helper for it public just for this summary line.
    detail = body.get("detail") if isinstance(body, Mapping) else None
    if isinstance(detail, str):
        return "value_error"
    entries = detail if isinstance(detail, list) else []
    types = (entry.get("type") for entry in entries if isinstance(entry, Mapping))
    return next((str(t) for t in types if t), None)


def duration(seconds: float) -> str:
    """``4.2 s`` under a minute, else ``m:ss`` or ``h:mm:ss``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def outputs(result: ItemResult) -> list[str]:
    """Where the item's images are: file paths when downloaded, else their URLs."""
    if result.files:
        return [str(f.path) for f in result.files]
    return [image.url for image in result.output.images] if result.output else []


def sources(result: ItemResult) -> list[str]:
    """Which files or URLs the item edited (data URIs and bytes shortened), so a JSON line
    says which input became which output."""
    named = []
    for source in result.input.image_urls if result.input is not None else ():
        if isinstance(source, bytes | bytearray | memoryview):
            named.append(f"<{len(source)} bytes>")
        elif isinstance(source, str) and source.startswith("data:"):
            named.append(source[: source.find(",") + 1] + "...")
        else:
            named.append(str(source))
    return named


def record(
    result: ItemResult, *, line: int | None = None, emulator: bool = False
) -> dict[str, Any]:
    """The JSON object printed for a finished item."""
    data: dict[str, Any] = {
        "input": result.key,
        "sources": sources(result),
        "request_id": result.request_id,
        "status": result.state.value,
        "outputs": outputs(result),
        "error": str(result.error) if result.error else None,
        "error_type": type(result.error).__name__ if result.error else None,
        "cost": float(result.cost),
    }
    if line is not None:
        data["line"] = line
    if getattr(result, "resumed", False):
        data["resumed"] = True
    if emulator:
        data["emulator"] = True
    return data


def describe(result: ItemResult) -> str:
    """One human line for a finished item: where its images went, or why it failed."""
    if result.ok:
        where = ", ".join(outputs(result)) or "(no images)"
        return f"✓ {result.key} → {where}"
    label = {
        ItemState.CANCELLED: "cancelled",
        ItemState.NOT_SUBMITTED: "not submitted",
        ItemState.UNKNOWN: "unknown",
        ItemState.INTERRUPTED: "interrupted",
    }
    state = label.get(result.state, "failed")
    return f"✗ {result.key} {state}: {result.error}"


def log_line(event: ItemLog) -> str:
    """A model log line, labelled with the input it belongs to."""
    return f"[{event.key}] {event.entry.message}"


class Reporter(Protocol):
    """What a run tells its user, however it is shown."""

    progress: Progress

    def start(self) -> None:
        """Begin showing progress (after the first notices)."""

    def notice(self, text: str) -> None:
        """A diagnostic line (the emulator banner, an interruption, a warning)."""

    def event(self, event: BatchEvent) -> None:
        """A progress event of the batch."""

    def result(self, result: ItemResult, line: int | None = None) -> None:
        """A finished item."""

    def close(self, summary: str) -> None:
        """The run ended: stop any display and show the summary."""

    async def animate(self) -> None:
        """Keep a live display fresh until cancelled (returns at once for plain output)."""


def _traceback(error: FalEditError | None) -> str:
    if error is None:
        return ""
    return "".join(traceback.format_exception(error)).rstrip()


@attrs.define
class JsonReporter:
    """One JSON object per finished item on ``out``; logs and diagnostics on ``err``."""

    progress: Progress
    out: TextIO
    err: TextIO
    emulator: bool = False
    debug: bool = False

    def start(self) -> None:
        return

    def notice(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def event(self, event: BatchEvent) -> None:
        self.progress.on_event(event)
        if isinstance(event, ItemLog):
            print(log_line(event), file=self.err, flush=True)

    def result(self, result: ItemResult, line: int | None = None) -> None:
        self.progress.on_result(result)
        data = record(result, line=line, emulator=self.emulator)
        print(json.dumps(data, ensure_ascii=False), file=self.out, flush=True)
        if self.debug and result.error is not None:
            print(_traceback(result.error), file=self.err, flush=True)

    def close(self, summary: str) -> None:
        print(summary, file=self.err, flush=True)

    async def animate(self) -> None:
        return


@attrs.define
class LinesReporter:
    """Human lines on a terminal when rich is not installed: logs, results, the summary."""

    progress: Progress
    out: TextIO
    debug: bool = False

    def start(self) -> None:
        return

    def notice(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def event(self, event: BatchEvent) -> None:
        self.progress.on_event(event)
        if isinstance(event, ItemLog):
            print(log_line(event), file=self.out, flush=True)

    def result(self, result: ItemResult, line: int | None = None) -> None:
        self.progress.on_result(result)
        p = self.progress
        print(f"{describe(result)}  [{p.finished}/{p.total}]", file=self.out, flush=True)
        if self.debug and result.error is not None:
            print(_traceback(result.error), file=self.out, flush=True)

    def close(self, summary: str) -> None:
        print(summary, file=self.out, flush=True)

    async def animate(self) -> None:
        return
