"""Running ``edit`` and ``batch``: the client (or the emulator), Ctrl-C, the deadline, the summary.

The batch runs in a cancel scope inside a task group that also watches SIGINT, SIGTERM and
SIGHUP (unless ``nohup`` ignores it). The first signal cancels that scope: leaving
``edit_many`` asks fal to cancel every job still in flight, and the run then says what fal
answered (a running job may finish anyway; the journal keeps those re-attachable). A second
signal exits at once (status 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM, 129 for
SIGHUP), leaving whatever the journal recorded to re-attach to. SIGHUP means the terminal
went away: what was written to it is sent to /dev/null from then on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import anyio
import anyio.abc
import attrs

from .. import (
    DEFAULT_ENDPOINT,
    DEFAULT_NAME_TEMPLATE,
    AsyncClient,
    AuthError,
    Batch,
    BatchEvent,
    CancelOutcome,
    Credentials,
    EditImageInput,
    EditItem,
    ItemInterrupted,
    ItemResult,
    ItemState,
    JobCancelledError,
    JournalError,
    estimate_batch,
    estimate_cost,
)
from ._html import write_report
from ._inputs import Planned, UsageError
from ._messages import cause, message, next_step
from ._progress import Finished, Progress, plural
from ._report import OutputClosed, Reporter, detach_terminal, printable, tolerating_hangup

__all__ = [
    "EMULATOR_BANNER",
    "NO_CREDENTIALS",
    "NO_CREDENTIALS_FOR_JOBS",
    "RunOptions",
    "auth_message",
    "check_credentials",
    "dry_run",
    "open_client",
    "run_batch",
]

#: The first line of output of every ``--emulator`` run.
EMULATOR_BANNER = (
    "EMULATOR: using a local fal emulator, not fal.ai. Nothing is sent to fal or paid for, "
    "and the edits are simple stand-ins made on this machine."
)
#: Seconds each emulated job runs, so the display and the streamed logs can be watched.
EMULATOR_PROCESSING_TIME = 1.0
NO_CREDENTIALS = (
    "no fal credentials: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET), "
    "or add --emulator to try it offline on a local emulator"
)
#: For status, logs, result and cancel, which have no --emulator to offer.
NO_CREDENTIALS_FOR_JOBS = (
    "no fal credentials: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET); for a local "
    "emulator, paste the export lines `fal-edit emulator` prints"
)
#: Exit statuses: 128 + the signal's number for a run that a signal stopped.
OK, FAILED, USAGE, HUNG_UP, INTERRUPTED, BROKEN_PIPE, TERMINATED = 0, 1, 2, 129, 130, 141, 143


@attrs.frozen(kw_only=True)
class RunOptions:
    """How a batch runs: where outputs go, limits, and what it talks to."""

    out: Path | None
    endpoint: str
    concurrency: int | None = None
    budget: Decimal | None = None
    journal: Path | str | None = None
    max_in_flight: int | None = None
    timeout: float | None = None
    emulator: bool = False
    retry_failed: bool = False
    resubmit_unknown: bool = False
    overwrite: bool = False
    name_template: str = DEFAULT_NAME_TEMPLATE
    #: Write the HTML report here when the run ends.
    report: Path | None = None


def check_credentials(*, emulator: bool) -> None:
    """Refuse to run without a key unless on the emulator: never a silent fake.

    Raises:
        UsageError: no ``FAL_KEY`` (nor ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``) and no emulator.
    """
    if not emulator and Credentials.from_env() is None:
        raise UsageError(NO_CREDENTIALS)


@asynccontextmanager
async def open_client(*, emulator: bool) -> AsyncIterator[AsyncClient]:
    """A client for fal as the environment configures it, or for a fresh local emulator."""
    if not emulator:
        async with AsyncClient() as client:
            yield client
        return
    try:
        from ..emulator import Emulator
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "PIL":
            raise
        raise UsageError("--emulator needs Pillow: pip install 'fal-edit-async[emulator]'") from exc
    async with (
        Emulator(processing_time=EMULATOR_PROCESSING_TIME) as emu,
        AsyncClient(
            api_key=emu.api_key,
            queue_url=emu.queue_url,
            rest_url=emu.rest_url,
            api_url=emu.api_url,
        ) as client,
    ):
        yield client


@attrs.define
class _Run:
    """What happened to a run, as the signal watcher and the result loop see it."""

    reporter: Reporter
    options: RunOptions
    #: Each key's position and manifest line, for the results edit_many does not yield.
    places: Mapping[str, tuple[int, int | None]]
    #: Each key's input, for the results of jobs cut short (their JSON line keeps sources).
    inputs: Mapping[str, EditImageInput] = attrs.field(factory=dict)
    interrupted: bool = False
    #: The signal that stopped the run (SIGINT, SIGTERM or SIGHUP), if one did.
    stopped_by: int | None = None
    auth_error: AuthError | None = None
    batch: Batch | None = None
    #: What fal answered to each cancel sent on the way out, by item.
    left: list[ItemInterrupted] = attrs.field(factory=list)
    #: stdout was closed (``| head``): the run stops as if interrupted.
    pipe_closed: bool = False
    scope: anyio.CancelScope | None = None

    @property
    def progress(self) -> Progress:
        return self.reporter.progress

    def event(self, event: BatchEvent) -> None:
        if isinstance(event, ItemInterrupted):
            self.left.append(event)
        self.progress.on_event(event)
        self.reporter.event(event)
        if self.batch is not None and (note := self.progress.on_limit(self.batch.concurrency)):
            self.reporter.notice(note)

    def report(self, result: ItemResult) -> None:
        finished = self.progress.on_result(result, self.places.get(result.key, (-1, None))[1])
        if finished is None:
            return  # told once already (an item cut short, then yielded after all)
        try:
            self.reporter.result(finished)
        except OutputClosed:
            self._pipe_closed()

    def _pipe_closed(self) -> None:
        self.pipe_closed = True
        _silence_stdout()
        if not self.interrupted:
            self.interrupted = True
            self.progress.stopping = "stopping"
            n = len(self.progress.active)
            self.reporter.notice(f"stdout was closed: cancelling {_jobs(n)} on fal...")
            if self.scope is not None:
                self.scope.cancel()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so nothing more (not even the exit's flush) fails on it."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


async def run_batch(planned: Sequence[Planned], reporter: Reporter, options: RunOptions) -> int:
    """Edit every valid item, report each as it finishes, and return the exit status."""
    places = {p.key: (i, p.line) for i, p in enumerate(planned)}
    inputs = {p.key: p.input for p in planned if p.input is not None}
    run = _Run(reporter, options, places, inputs)
    if options.emulator:
        reporter.notice(EMULATOR_BANNER)
        if options.out is None:
            reporter.notice("The emulator's image URLs stop working when fal-edit exits.")
    reporter.start()
    timed_out = False
    try:
        for index, item in enumerate(planned):
            if item.error is not None:
                state = ItemState.FAILED
                run.report(ItemResult(key=item.key, index=index, state=state, error=item.error))
        # A line's key, given or derived from file names, is only its name: the journal
        # knows each item by its content, so naming, renaming or reordering lines pays nothing.
        valid = [EditItem(input=p.input, name=p.key) for p in planned if p.input is not None]
        if run.pipe_closed:  # nobody reads the results any more: send nothing
            valid = []
        timed_out = await _run_valid(run, valid) if valid else False
    finally:
        with contextlib.suppress(OutputClosed):
            reporter.close(closing_lines(run))
        if options.report is not None:
            write_report(
                options.report,
                planned,
                run.progress,
                emulator=options.emulator,
                journal=options.journal is not None,
            )
    return _status(run, timed_out)


def closing_lines(run: _Run) -> list[str]:
    """The summary, then retries and rate limiting, then each item that did not finish with
    its cause and what to do next."""
    p, options = run.progress, run.options
    lines = [p.summary(emulator=options.emulator)]
    extra = []
    if p.job_retries:
        extra.append(
            f"{_jobs(p.job_retries)} submitted again (the earlier job failed on fal's side, "
            "or fal confirmed it cancelled)"
        )
    if run.batch is not None:
        retries = run.batch.summary().request_retries
        total = sum(retries.values())
        if total:
            kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in retries.items() if n)
            extra.append(f"{plural(total, 'request')} retried ({kinds})")
    if p.lowest is not None:
        extra.append(f"rate limited: in flight lowered to {p.lowest}")
    if extra:
        lines.append("Retries: " + "; ".join(extra))
    lines += _failure_lines(run)
    lines += _journal_lines(run)
    if run.interrupted and options.journal is None and p.done < p.total:
        lines.append(
            "No --journal: running this again submits (and pays for) every item again, and "
            "the outputs get new names. Add --journal PATH to make a run resumable."
        )
    if options.report is not None:
        lines.append(f"Report: {options.report}")
    # fal's error types (in the counts) and keys reach these lines: never raw on a terminal.
    return [printable(line) for line in lines]


#: Items listed one by one at the end; more are counted.
MAX_LISTED = 20


def _failure_lines(run: _Run) -> list[str]:
    """Each item that did not finish, with its cause and what to do next; the many that
    ended alike for a reason of the run (over budget, cancelled) in one line."""
    journal = run.options.journal is not None
    groups: dict[tuple[str, str], list[Finished]] = {}
    for f in run.progress.finished_items.values():
        if f.outcome != "done":
            step = next_step(f.result, f.outcome, journal=journal, line=f.line)
            # An interrupted job carries a JobCancelledError whatever fal answered (or if it
            # did not): "cancelled" would be wrong for it, its state says it all.
            error = f.result.error
            why = cause(error) if error is not None and f.outcome != "interrupted" else f.outcome
            groups.setdefault((why, step), []).append(f)
    if not groups:
        return []
    lines, listed, hidden = ["Not done:"], 0, 0
    for (why, step), items in groups.items():
        if len(items) > 3 and why in ("over budget", "cancelled", "interrupted"):
            also = f" ({why})" if why != items[0].outcome else ""
            lines.append(f"  {plural(len(items), 'item')} {items[0].outcome}{also}: {step}")
            continue
        for f in items:
            if listed == MAX_LISTED:
                hidden += 1
                continue
            listed += 1
            where = f" (line {f.line})" if f.line else ""
            text = message(f.result.error) if f.result.error else f.outcome
            lines.append(printable(f"  ✗ {f.result.key}{where} {f.outcome}: {text} → {step}"))
    if hidden:
        lines.append(f"  … and {hidden} more (--json or --report lists every item)")
    return lines


def _journal_error(run: _Run) -> JournalError | None:
    return run.batch.summary().journal_error if run.batch is not None else None


def _journal_lines(run: _Run) -> list[str]:
    """A journal that refused a write: what it may have lost, and how to get it back."""
    error = _journal_error(run)
    if error is None:
        return []
    # Not the address itself: a postgresql:// one may carry a password.
    return [
        f"Journal: a write failed ({message(error)}). No submit was sent after it, but the "
        "journal may not hold all this run did: a rerun can take some items for lost "
        "submits, or write their outputs again under new names. Free space for it, then "
        "`fal-edit reconcile JOURNAL` finds lost submits in fal's history; "
        "--resubmit-unknown would pay for them again."
    ]


def _status(run: _Run, timed_out: bool) -> int:
    if run.auth_error is not None:
        print(f"fal-edit: error: {auth_message(run.auth_error)}", file=sys.stderr)
        return USAGE
    if run.pipe_closed:
        return BROKEN_PIPE
    if run.interrupted:
        return _signal_status(run)
    p = run.progress
    # A journal that failed a write broke the rerun's promise: never a quiet success.
    whole = p.done == p.total and not timed_out and _journal_error(run) is None
    return OK if whole else FAILED


async def _run_valid(run: _Run, items: list[EditItem]) -> bool:
    """Run the batch; True when the deadline cut it short."""
    options, reporter = run.options, run.reporter
    deadline = anyio.current_time() + options.timeout if options.timeout else math.inf
    scope = run.scope = anyio.CancelScope(deadline=deadline)
    async with open_client(emulator=options.emulator) as client:
        async with anyio.create_task_group() as tg:
            await tg.start(_watch_signals, run, scope)
            tg.start_soon(reporter.animate)
            with scope:
                await _follow(run, client, items, scope)
            tg.cancel_scope.cancel()
    if run.batch is not None:
        # Items that finished as the run was stopped, their results never yielded: done all
        # the same (files on disk, journaled), and reported as such, not as "not started".
        for result in run.batch.undelivered:
            run.report(result)
    timed_out = scope.cancelled_caught and not run.interrupted and run.auth_error is None
    if timed_out or run.auth_error is not None:
        run.progress.stopping = "timed out" if timed_out else "key refused"
    _report_stopped(run)
    if run.pipe_closed:
        reporter.notice(f"Stopped: {_cancels(run)}")
    elif timed_out:
        reporter.notice(f"Timed out after {options.timeout:g} s: {_cancels(run)}")
    elif run.interrupted:
        reporter.notice(f"Interrupted: {_cancels(run)}")
    return timed_out


def _cancels(run: _Run) -> str:
    """What the cancels sent on the way out achieved, as fal answered them."""
    if not run.left:
        return "no cancel was sent: no job in flight was still running on fal."
    taken = sum(e.cancel in (CancelOutcome.REQUESTED, CancelOutcome.OK) for e in run.left)
    text = f"fal accepted the cancel of {_jobs(taken)}."
    rest = len(run.left) - taken
    if rest:
        how = (
            "run again with the same --journal to fetch them"
            if run.options.journal
            else ("`fal-edit result REQUEST_ID` fetches them")
        )
        text += f" {_jobs(rest)} had finished or did not answer: {how}."
    return text


async def _follow(
    run: _Run,
    client: AsyncClient,
    items: list[EditItem],
    scope: anyio.CancelScope,
) -> None:
    options = run.options
    async with client.edit_many(
        items,
        download_to=options.out,
        concurrency=options.concurrency,
        budget=options.budget,
        journal=options.journal,
        max_in_flight=options.max_in_flight,
        on_event=run.event,
        endpoint=options.endpoint,
        retry_failed=options.retry_failed,
        resubmit_unknown=options.resubmit_unknown,
        overwrite=options.overwrite,
        name_template=options.name_template,
    ) as batch:
        run.batch = batch
        async for result in batch:
            _take(run, scope, result)


def auth_message(error: AuthError) -> str:
    """The error fal gave for the key, with a pointer to where the key comes from."""
    text = str(error)
    return text if "FAL_KEY" in text else f"{text} (check FAL_KEY)"


def _take(run: _Run, scope: anyio.CancelScope, result: ItemResult) -> None:
    run.report(result)
    if isinstance(result.error, AuthError) and run.auth_error is None:
        run.auth_error = result.error  # the key is wrong for every item: stop now
        run.progress.stopping = "key refused"
        scope.cancel()


def _report_stopped(run: _Run) -> None:
    """Report each job a cut-short batch left behind as fal answered its cancel: the jobs seen
    submitted, and those whose submit was answered as the batch was left."""
    progress = run.progress
    answers = {e.key: e for e in run.left}
    jobs = {job.key: (job.request_id, job.state) for job in progress.active.values()}
    for key, left in answers.items():
        jobs.setdefault(key, (left.request_id, "submitted"))
    for key, (request_id, stage) in jobs.items():
        answer = answers[key].cancel if key in answers else None
        if answer is CancelOutcome.OK:
            state, message = ItemState.CANCELLED, "cancelled on fal before it finished"
        elif answer is CancelOutcome.REQUESTED:  # best effort: a running job may finish
            state, message = ItemState.INTERRUPTED, "fal took the cancel, but it may still run"
        elif stage == "downloading":  # paid for and done on fal: keep the way back to it
            state, message = ItemState.INTERRUPTED, "stopped while downloading"
        elif answer is CancelOutcome.ALREADY_COMPLETED:
            state, message = ItemState.INTERRUPTED, "the job had finished on fal"
        elif key not in answers:  # no cancel sent: its status had said it finished
            progress.finished_on_fal(key)  # billed: spent, not "may still run"
            state, message = ItemState.INTERRUPTED, "the job had finished on fal, not fetched yet"
        else:
            state, message = ItemState.INTERRUPTED, "fal did not answer the cancel"
        result = ItemResult(
            key=key,
            index=run.places.get(key, (-1, None))[0],
            state=state,
            input=run.inputs.get(key),
            request_id=request_id,
            error=JobCancelledError(request_id, message),
            attempts=1,
            cost=progress.estimates.get(key, Decimal(0)),
            resumed=progress.re_attached(key),  # an earlier run's job: spent by that run
        )
        run.report(result)


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


async def _watch_signals(
    run: _Run,
    scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First Ctrl-C, SIGTERM (``docker stop``, ``systemctl stop``) or SIGHUP (the terminal
    closed): cancel the batch and its jobs on fal, then the summary. A second signal: exit at
    once."""
    try:
        receiver = anyio.open_signal_receiver(*_caught_signals())
    except NotImplementedError:  # Windows: Ctrl-C stays a KeyboardInterrupt
        task_status.started()
        return
    with receiver as signals:
        task_status.started()
        async for signum in signals:
            if signum == _SIGHUP:
                detach_terminal()
                if run.interrupted:
                    # Not a hurry: a closed window hangs up twice (an interactive shell
                    # forwards its SIGHUP, then the kernel sends the job's group one more).
                    continue
            if run.interrupted:
                _exit_now(run)
            run.interrupted, run.stopped_by = True, signum
            run.progress.stopping = "stopping"
            # A job being downloaded has finished on fal: there is nothing to cancel.
            n = sum(job.state != "downloading" for job in run.progress.active.values())
            name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
            # Only accepted jobs are counted; a submit still in flight is cancelled once fal
            # answers it, so "cancelling 0 jobs" would be wrong while one is.
            what = (
                f"cancelling {_jobs(n)} on fal, and any submit in flight once fal accepts it"
                if n
                else "stopping; any submit in flight is cancelled once fal accepts it"
            )
            run.reporter.notice(f"{name}: {what}... ({name} again to quit at once)")
            scope.cancel()


def _exit_now(run: _Run) -> None:
    """The second Ctrl-C: say which jobs may still run on fal, then leave without cleanup."""
    ids = [printable(job.request_id) for job in run.progress.active.values()]
    with contextlib.suppress(OutputClosed):
        run.reporter.close(["Interrupted again: exiting now."])
    with tolerating_hangup(), contextlib.suppress(BrokenPipeError, ValueError):
        if ids:
            if run.options.journal is None:
                where = "fal-edit cancel REQUEST_ID"
            elif _journal_error(run) is not None:
                where = "the journal failed a write and may not have them: keep these ids"
            else:
                where = "the journal has them"
            print(f"jobs that may still run on fal ({where}): {' '.join(ids)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(_signal_status(run))


_SIGHUP: signal.Signals | None = getattr(signal, "SIGHUP", None)  # not on Windows
_SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
if _SIGHUP is not None:
    _SIGNAL_NAMES[_SIGHUP] = "SIGHUP"


def _caught_signals() -> list[signal.Signals]:
    """SIGINT and SIGTERM; SIGHUP too, unless it is ignored (``nohup``: the run is meant to
    outlive its terminal, so a hangup must not stop it)."""
    caught = [signal.SIGINT, signal.SIGTERM]
    if _SIGHUP is not None and signal.getsignal(_SIGHUP) is not signal.SIG_IGN:
        caught.append(_SIGHUP)
    return caught


def _signal_status(run: _Run) -> int:
    """128 + the signal, as a shell reports a process the signal killed."""
    if run.stopped_by == signal.SIGTERM:
        return TERMINATED
    if run.stopped_by is not None and run.stopped_by == _SIGHUP:
        return HUNG_UP
    return INTERRUPTED


def dry_run(
    planned: Sequence[Planned],
    out: TextIO,
    err: TextIO,
    *,
    json_mode: bool,
    budget: Decimal | None,
    endpoint: str = DEFAULT_ENDPOINT,
) -> int:
    """Check every input (files by their contents too) and print what the run would cost.

    Human output groups items of the same price in one line; ``--json`` prints one object per
    item, then one ``{"status": "total", ...}`` object. Nothing is sent, no key is needed.
    A closed stdout (``| head -1``) ends it quietly with 141, as it ends a run.
    """
    try:
        status = _estimate(planned, out, err, json_mode=json_mode, budget=budget, endpoint=endpoint)
        out.flush()  # here, not at exit, where a closed pipe could no longer be told apart
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    return status


def _estimate(
    planned: Sequence[Planned],
    out: TextIO,
    err: TextIO,
    *,
    json_mode: bool,
    budget: Decimal | None,
    endpoint: str,
) -> int:
    committed, fits = Decimal(0), 0
    groups: dict[str, list[str]] = {}
    for item in planned:
        if item.input is None:
            _print_invalid(item, out, json_mode)
            continue
        estimate = estimate_cost(item.input)
        if budget is None or committed + estimate.usd <= budget:  # as edit_many's budget does
            committed, fits = committed + estimate.usd, fits + 1
        if json_mode:
            record = {"input": item.key, "status": "estimate", "cost": float(estimate.usd)}
            record |= {"worst_case": estimate.worst_case, "line": item.line}
            print(json.dumps({k: v for k, v in record.items() if v is not None}), file=out)
        else:
            groups.setdefault(str(estimate), []).append(item.key)
    for price, keys in groups.items():
        names = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        print(f"{plural(len(keys), 'item')} at ~{price} each: {names}", file=out)
    valid = [(p.key, p.input) for p in planned if p.input is not None]
    total = estimate_batch(valid)
    invalid = len(planned) - len(valid)
    other = endpoint != DEFAULT_ENDPOINT
    if json_mode:
        summary: dict[str, object] = {
            "status": "total",
            "items": total.items,
            "cost": float(total.total_usd),
            "worst_case": total.worst_case,
            "invalid": invalid,
        }
        if budget is not None:
            summary |= {"budget": float(budget), "within_budget": fits}
        if other:
            summary["priced_as"] = DEFAULT_ENDPOINT
        print(json.dumps(summary), file=out)
    text = f"Dry run: {plural(total.items, 'item')}, estimated ${total.total_usd}"
    if total.worst_case:
        text += f" ({total.worst_case} priced at their worst case: quality or size is auto)"
    if invalid:
        text += f"; {plural(invalid, 'invalid item')} would fail before submitting"
    if budget is not None:
        text += f"; the ${budget:.2f} budget covers {fits} of them"
    if other:
        text += f"; priced as {DEFAULT_ENDPOINT}: {endpoint} may cost otherwise"
    print(text + ". Nothing was sent.", file=err)
    return FAILED if invalid else OK


def _print_invalid(item: Planned, out: TextIO, json_mode: bool) -> None:
    error = message(item.error) if item.error is not None else "invalid"
    if json_mode:
        record = {"input": item.key, "status": "failed", "error": error}
        print(json.dumps(record | ({"line": item.line} if item.line else {})), file=out)
    else:
        where = f" (line {item.line})" if item.line else ""
        print(f"✗ {item.key}{where}: {error}", file=out)
