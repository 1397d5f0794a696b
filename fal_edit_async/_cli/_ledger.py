"""``fal-edit journal show JOURNAL``: what a batch's journal holds, from any shell.

It opens the journal read-only, so it works while a batch is running on it: counts by state,
the estimated cost of the jobs fal accepted, and each item that needs a person (``unknown``:
a submit whose answer was lost; ``failed``: fal's verdict), with its reason. ``JOURNAL`` is a
SQLite file or a ``postgresql://`` ledger; for the latter, it also lists the live workers and
how many items each holds, so a batch run by many machines can be watched from any host.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from .. import JournalEntry, JournalState, JournalSummary, open_journal
from ._html import write_journal_report
from ._report import printable
from ._run import OK

__all__ = ["report", "show"]

#: What each state means, for the human listing.
_MEANING = {
    JournalState.DOWNLOADED: "downloaded",
    JournalState.COMPLETED: "finished on fal, not downloaded yet",
    JournalState.SUBMITTED: "on fal (a rerun re-attaches)",
    JournalState.CANCEL_REQUESTED: "cancel asked; a rerun checks whether it ran anyway",
    JournalState.CANCELLED: "cancelled on fal (a rerun submits again)",
    JournalState.UNSENT: "never reached fal (a rerun submits again)",
    JournalState.FAILED: "failed (--retry-failed submits again)",
    JournalState.UNKNOWN: "submit answer lost; fal may have run it (`fal-edit reconcile`)",
    JournalState.SUBMITTING: "being submitted by a live run",
    JournalState.PENDING: "claimed by a worker, not submitted yet",
    JournalState.AMBIGUOUS: "several jobs carry its input; never submitted again",
}


async def show(args: argparse.Namespace, out: TextIO) -> int:
    """Print the journal's summary (``--json``: one object)."""
    async with open_journal(args.journal, read_only=True) as journal:
        summary = await journal.summary()
    if args.json:
        print(json.dumps(_as_json(summary)), file=out)
        return OK
    where = printable(str(summary.path))
    print(f"{where}: {summary.total} items, ~${summary.estimated_cost} estimated", file=out)
    for state in JournalState:
        if n := summary.counts.get(state, 0):
            print(f"  {n:>6} {state.value:<16} {_MEANING[state]}", file=out)
    for title, entries in (("unknown", summary.unknown), ("failed", summary.failed)):
        if entries:
            print(f"{title}:", file=out)
            for entry in entries:
                print(f"  {printable(_line(entry))}", file=out)
    if summary.jobs_named_twice:
        print("rows naming one job (edited by hand?); a rerun follows it for none:", file=out)
        for request_id, keys in summary.jobs_named_twice.items():
            print(f"  {printable(request_id)}: {printable(', '.join(keys))}", file=out)
    if summary.workers:
        print("live workers:", file=out)
        for worker, n in sorted(summary.workers.items()):
            print(f"  {printable(worker)}: {n} items", file=out)
    return OK


def _line(entry: JournalEntry) -> str:
    rid = f" [{entry.request_id}]" if entry.request_id else ""
    return f"{entry.key}{rid}: {entry.error or entry.error_type or 'no reason recorded'}"


def _as_json(summary: JournalSummary) -> dict[str, object]:
    def item(entry: JournalEntry) -> dict[str, object]:
        return {
            "key": entry.key,
            "request_id": entry.request_id,
            "error": entry.error,
            "error_type": entry.error_type,
        }

    return {
        "journal": str(summary.path),
        "total": summary.total,
        "counts": {state.value: n for state, n in summary.counts.items()},
        "estimated_cost": float(summary.estimated_cost),
        "unknown": [item(e) for e in summary.unknown],
        "failed": [item(e) for e in summary.failed],
        "workers": dict(summary.workers),
        "jobs_named_twice": {r: list(k) for r, k in summary.jobs_named_twice.items()},
    }


async def report(path: Path, page: Path) -> int:
    """Write the HTML page of the journal's items to ``page``; returns how many it shows."""
    async with open_journal(path, read_only=True) as journal:
        entries = await journal.entries()
    return write_journal_report(page, entries, path)
