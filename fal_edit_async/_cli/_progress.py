"""A run's progress: what became of each item, what is in flight, what it cost, the ETA.

:class:`Progress` folds the batch's events and results into the numbers every reporter shows
(the live panel, plain lines, the summary, the HTML report), so they can never disagree. Each
item ends in one outcome (:func:`~._messages.outcome`), counted once: a second result for a
key is ignored. Cost is split three ways, all estimates: spent by this run (jobs it submitted
that completed; fal bills only those), spent by earlier runs (items the journal already had),
and committed in flight (jobs on fal now, which will be paid when they complete). A job that
completed on fal is spent even when the run stopped before its outputs were downloaded.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal

import attrs

from .. import (
    BatchEvent,
    CancelOutcome,
    ItemCompleted,
    ItemDownloaded,
    ItemFailed,
    ItemInterrupted,
    ItemLog,
    ItemQueued,
    ItemReattached,
    ItemResult,
    ItemStarted,
    ItemSubmitted,
)
from ._messages import cause, outcome

__all__ = ["OUTCOMES", "ActiveJob", "Finished", "Progress", "duration", "plural"]

#: Every outcome, in the order the panel and the summary name them.
OUTCOMES = ("done", "failed", "cancelled", "not submitted", "skipped", "unknown", "interrupted")
#: Log lines kept per item for the report.
MAX_LOGS = 200


def plural(n: int, word: str) -> str:
    """``1 item``, ``2 items``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration(seconds: float) -> str:
    """``4.2 s`` under a minute, else ``m:ss`` or ``h:mm:ss``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


@attrs.define
class ActiveJob:
    """A job on fal that has not finished: its state as last heard."""

    key: str
    request_id: str
    since: float
    state: str = "submitted"  # submitted, re-attached, queued, running, downloading
    position: int | None = None
    last_log: str | None = None


@attrs.define
class Finished:
    """An item that ended: its result, outcome, and what the report shows of it."""

    result: ItemResult
    outcome: str
    line: int | None
    seconds: float | None
    logs: tuple[str, ...]
    #: Another item already ended the same way that is not worth a line each (over budget):
    #: the terminal shows the first, the summary counts them all.
    repeat: bool = False


@attrs.define
class Progress:
    """Counts, active jobs, ETA and cost of a run, updated from events and results."""

    total: int
    estimates: Mapping[str, Decimal] = attrs.field(factory=dict)
    clock: Callable[[], float] = time.monotonic
    started: float = attrs.field(init=False)
    active: dict[str, ActiveJob] = attrs.field(factory=dict, init=False)
    counts: Counter[str] = attrs.field(factory=Counter, init=False)
    reasons: Counter[str] = attrs.field(factory=Counter, init=False)
    #: Items that ended, in the order they did.
    finished_items: dict[str, Finished] = attrs.field(factory=dict, init=False)
    #: Done items an earlier run had paid for (from the journal).
    resumed: int = attrs.field(default=0, init=False)
    spent: Decimal = attrs.field(default=Decimal(0), init=False)
    spent_before: Decimal = attrs.field(default=Decimal(0), init=False)
    #: Jobs submitted again after a failure fal called transient.
    job_retries: int = attrs.field(default=0, init=False)
    #: The jobs-in-flight limit as last seen, and the lowest rate limiting took it to.
    limit: int | None = attrs.field(default=None, init=False)
    lowest: int | None = attrs.field(default=None, init=False)
    #: Set when the run is being stopped (Ctrl-C, a deadline, a refused key): no ETA then.
    stopping: str | None = attrs.field(default=None, init=False)
    #: Items this run submitted a job for, and items whose earlier job it re-attached to.
    _fresh: set[str] = attrs.field(factory=set, init=False)
    _reattached: set[str] = attrs.field(factory=set, init=False)
    #: Items whose job completed on fal (so it is billed), whether or not it was downloaded.
    _completed: set[str] = attrs.field(factory=set, init=False)
    _first_seen: dict[str, float] = attrs.field(factory=dict, init=False)
    _logs: dict[str, list[str]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def on_event(self, event: BatchEvent) -> None:
        """Follow one job's state: submitted (or re-attached), queued, running, downloading."""
        key = event.key
        if isinstance(event, ItemSubmitted | ItemReattached):
            fresh = isinstance(event, ItemSubmitted)
            (self._fresh if fresh else self._reattached).add(key)
            self._first_seen.setdefault(key, self.clock())
            state = "submitted" if fresh else "re-attached"
            self.active[key] = ActiveJob(key, event.request_id, self.clock(), state)
            if fresh and event.attempt > 1:
                self.job_retries += 1
        if isinstance(event, ItemCompleted) or (
            isinstance(event, ItemInterrupted) and event.cancel is CancelOutcome.ALREADY_COMPLETED
        ):
            self._completed.add(key)
        if isinstance(event, ItemLog):
            logs = self._logs.setdefault(key, [])
            if len(logs) < MAX_LOGS:
                logs.append(event.entry.message)
        job = self.active.get(key)
        if job is None:
            return
        if isinstance(event, ItemQueued):
            job.state, job.position = "queued", event.position
        elif isinstance(event, ItemStarted):
            job.state, job.since, job.position = "running", self.clock(), None
        elif isinstance(event, ItemLog):
            job.last_log = event.entry.message
        elif isinstance(event, ItemCompleted):
            job.state, job.since = "downloading", self.clock()
        elif isinstance(event, ItemDownloaded | ItemFailed):
            del self.active[key]

    def on_limit(self, level: int) -> str | None:
        """Note the jobs-in-flight limit; a notice when rate limiting lowered it."""
        before, self.limit = self.limit, level
        if before is not None and level < before:
            self.lowest = level if self.lowest is None else min(self.lowest, level)
            return f"rate limited: in flight lowered to {level}"
        return None

    def on_result(self, result: ItemResult, line: int | None = None) -> Finished | None:
        """Count a finished item once; None when it was counted already."""
        if result.key in self.finished_items:
            return None
        self.active.pop(result.key, None)
        submitted = result.key in self._fresh or result.key in self._reattached
        state = outcome(result, submitted=submitted)
        self.counts[state] += 1
        if state == "done" or self._billed_unfinished(result.key, state):
            estimate = self.estimates.get(result.key, result.cost)
            if result.key in self._fresh or not result.resumed:  # fal bills on completion
                self.spent += estimate
            else:  # the journal's: finished before, or a job an earlier run submitted
                self.spent_before += estimate
                self.resumed += state == "done"
        elif result.error is not None and state in ("failed", "not submitted"):
            self.reasons[cause(result.error)] += 1
        seen = self._first_seen.get(result.key)
        seconds = self.clock() - seen if seen is not None else None
        logs = tuple(self._logs.pop(result.key, ()))
        repeat = (
            state == "not submitted"
            and result.error is not None
            and self.reasons[cause(result.error)] > 1
        )
        done = Finished(
            result=result, outcome=state, line=line, seconds=seconds, logs=logs, repeat=repeat
        )
        self.finished_items[result.key] = done
        return done

    def re_attached(self, key: str) -> bool:
        """True when this run followed ``key``'s job from an earlier run's journal."""
        return key in self._reattached and key not in self._fresh

    def finished_on_fal(self, key: str) -> None:
        """Note that ``key``'s job completed on fal (billed), though no event said so yet."""
        self._completed.add(key)

    def _billed_unfinished(self, key: str, state: str) -> bool:
        """An item cut short, or failed, after its job completed on fal (its download was
        stopped or failed): billed all the same."""
        return state in ("interrupted", "failed") and key in self._completed

    @property
    def finished(self) -> int:
        """Items that ended, whatever the outcome."""
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        """Items completed (and downloaded, when asked)."""
        return self.counts["done"]

    @property
    def failed(self) -> int:
        """Items that ended in failure (not cancelled, skipped, unknown or unsent)."""
        return self.counts["failed"]

    @property
    def in_flight_cost(self) -> Decimal:
        """Estimated USD of the jobs on fal now: committed, paid when they complete."""
        return sum((self.estimates.get(k, Decimal(0)) for k in self.active), Decimal(0))

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.started

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None until an item has finished, or once stopping."""
        if self.stopping or not self.finished or self.finished >= self.total:
            return None
        return self.elapsed() / self.finished * (self.total - self.finished)

    def counts_text(self) -> str:
        """``180 done (12 from the journal), 5 failed (5 over budget), 3 cancelled``."""
        parts = []
        for state in OUTCOMES:
            n = self.counts[state]
            if not n and state != "done":
                continue
            text = f"{n} {state}"
            if state == "done" and self.resumed:
                text += f" ({self.resumed} from the journal)"
            if state in ("failed", "not submitted"):
                why = self._why(state)
                text += f" ({why})" if why else ""
            parts.append(text)
        left = self.total - self.finished - len(self.active)
        if self.active:
            parts.append(f"{len(self.active)} in flight")
        if left > 0:
            parts.append(f"{left} not started")
        return ", ".join(parts)

    def _why(self, state: str) -> str:
        causes = Counter(
            cause(f.result.error)
            for f in self.finished_items.values()
            if f.outcome == state and f.result.error is not None
        )
        return ", ".join(f"{n} {r}" for r, n in causes.most_common())

    def cost_text(self, *, emulator: bool = False) -> str:
        """``~$1.20 spent by this run, ~$0.40 by earlier runs, ~$0.27 in flight``."""
        spent = f"~${self.spent:.2f}"
        parts = [f"this run would cost {spent}" if emulator else f"{spent} spent by this run"]
        if self.spent_before:
            parts.append(f"~${self.spent_before:.2f} by earlier runs")
        if self.active:
            parts.append(f"~${self.in_flight_cost:.2f} in flight")
        running = [
            k
            for k, f in self.finished_items.items()
            if f.outcome == "interrupted" and not self._billed_unfinished(k, f.outcome)
        ]
        if running:  # the jobs that completed are spent above; these may complete yet
            left = sum((self.estimates.get(k, Decimal(0)) for k in running), Decimal(0))
            parts.append(f"~${left:.2f} for jobs left on fal that may still run")
        note = "emulator: nothing is paid" if emulator else "estimated"
        return f"{', '.join(parts)} ({note})"

    def summary(self, *, emulator: bool = False) -> str:
        """The closing line: outcomes of the total, cost, and time."""
        return (
            f"{self.counts_text()} of {self.total} · {self.cost_text(emulator=emulator)}"
            f" · {duration(self.elapsed())}"
        )
