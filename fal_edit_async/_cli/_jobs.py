"""``status``, ``logs``, ``result`` and ``cancel``: re-attach to any job by its request id.

Only ``cancel`` cancels. Following a job (``logs --follow``, ``result``) reads its status
stream and never cancels it on the way out, so Ctrl-C or ``--timeout`` there just stops
watching: the job may be someone else's batch.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import aclosing
from typing import TextIO

import anyio

from .. import CancelOutcome, Completed, InProgress, JobHandle, JobStatus, LogEntry, Queued
from .._converter import to_wire  # the one allowed private import: models as JSON
from ._report import printable
from ._run import FAILED, OK, open_client

__all__ = ["cancel", "describe_status", "format_log", "logs", "result", "status"]


def describe_status(status: JobStatus) -> str:
    """One line for a status: the state, the queue position, or the error."""
    if isinstance(status, Queued):
        ahead = status.position
        if ahead is None:
            return "IN_QUEUE"
        return f"IN_QUEUE ({ahead} request{'' if ahead == 1 else 's'} ahead)"
    if isinstance(status, InProgress):
        return "IN_PROGRESS"
    if isinstance(status, Completed):
        if status.failed:
            kind = f" [{status.error_type}]" if status.error_type else ""
            return f"COMPLETED with an error: {status.error or 'job failed'}{kind}"
        return "COMPLETED"
    return status.status


def format_log(entry: LogEntry) -> str:
    """A log line as ``12:00:01 INFO message`` (time and level when fal sent them)."""
    parts = [entry.timestamp.strftime("%H:%M:%S")] if entry.timestamp else []
    parts += [entry.level] if entry.level else []
    return " ".join([*parts, entry.message])


def _print_log(entry: LogEntry, out: TextIO, json_mode: bool) -> None:
    text = json.dumps(to_wire(entry)) if json_mode else printable(format_log(entry))
    print(text, file=out, flush=True)


async def status(args: argparse.Namespace, out: TextIO) -> int:
    """Print the job's status once (with ``--logs``, its log lines too)."""
    async with open_client(emulator=False) as client:
        current = await client.status(args.request_id, endpoint=args.endpoint, logs=args.logs)
    if args.json:
        print(json.dumps(to_wire(current)), file=out)
        return OK
    print(describe_status(current), file=out)
    for entry in getattr(current, "logs", ()):
        _print_log(entry, out, json_mode=False)
    return OK


async def logs(args: argparse.Namespace, out: TextIO) -> int:
    """Print the job's log lines; with ``--follow``, stream them until the job completes."""
    async with open_client(emulator=False) as client:
        handle = client.handle(args.request_id, endpoint=args.endpoint)
        if args.follow:
            return await _follow(handle, out, args.json)
        current = await handle.status(logs=True)
    if isinstance(current, Queued):
        print(f"no logs yet: {describe_status(current)}", file=sys.stderr)
    for entry in getattr(current, "logs", ()):
        _print_log(entry, out, args.json)
    return OK


async def _follow(handle: JobHandle, out: TextIO, json_mode: bool) -> int:
    async with aclosing(handle.updates(logs=True)) as updates:
        async for update in updates:
            for entry in getattr(update, "logs", ()):
                _print_log(entry, out, json_mode)
            if isinstance(update, Completed):
                print(describe_status(update), file=sys.stderr)
                return FAILED if update.failed else OK
    return OK  # pragma: no cover - updates() ends only after COMPLETED


async def result(args: argparse.Namespace, out: TextIO) -> int:
    """Wait for the job (never cancelling it), print its output, download it with ``--out``."""
    async with open_client(emulator=False) as client:
        handle = client.handle(args.request_id, endpoint=args.endpoint)
        with anyio.move_on_after(args.timeout):
            completed = await _completion(handle)
            output = await handle.fetch_result(completed)
            indent = 2 if out.isatty() else None
            print(json.dumps(to_wire(output), indent=indent), file=out, flush=True)
            if args.out is not None:
                files = await client.download(output, args.out, stem=args.request_id)
                for file in files:
                    print(f"saved {file.path}", file=sys.stderr)
            return OK
    print(
        f"fal-edit: no result within {args.timeout:g} s; the job is still on fal "
        f"(fal-edit status {args.request_id})",
        file=sys.stderr,
    )
    return FAILED


async def _completion(handle: JobHandle) -> Completed:
    async with aclosing(handle.updates(logs=False)) as updates:
        async for update in updates:
            if isinstance(update, Completed):
                return update
    raise AssertionError("unreachable: updates() ends only after COMPLETED")


_OUTCOMES = {
    CancelOutcome.REQUESTED: "cancellation requested",
    CancelOutcome.OK: "cancelled",
    CancelOutcome.ALREADY_COMPLETED: "already completed: nothing to cancel",
    CancelOutcome.NOT_FOUND: "no such request",
}


async def cancel(args: argparse.Namespace, out: TextIO) -> int:
    """Ask fal to cancel the job; exit 1 when there was nothing to cancel."""
    async with open_client(emulator=False) as client:
        outcome = await client.cancel(args.request_id, endpoint=args.endpoint)
    if args.json:
        print(json.dumps({"request_id": args.request_id, "outcome": outcome.value}), file=out)
    else:
        print(f"{args.request_id}: {_OUTCOMES[outcome]}", file=out)
    return OK if outcome in (CancelOutcome.REQUESTED, CancelOutcome.OK) else FAILED
