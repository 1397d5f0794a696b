"""``fal-edit reconcile JOURNAL``: settle a journal's lost submits, and say what became of each.

Opens the journal for writing (so not while a batch runs on it), decides every ``unknown``
row from evidence (its webhook record, fal's request history, the start-timeout bound: see
``AsyncClient.reconcile``) and prints how many were resolved, adopted, made resubmittable,
found ambiguous or left unknown, with each row's job or reason. The next run of the batch
then follows the jobs found and submits only the resubmittable items.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TextIO

from .. import Reconciled, ReconcilePolicy, Resolution
from ._report import printable
from ._run import OK, open_client

__all__ = ["reconcile"]

_MEANING = {
    Resolution.RESOLVED: "its webhook or fal named its job (a rerun follows it)",
    Resolution.ADOPTED: "its job found in fal's history (a rerun follows it)",
    Resolution.RESUBMITTABLE: "provably no job (a rerun submits it)",
    Resolution.AMBIGUOUS: "two or more jobs carry its input (never submitted again)",
    Resolution.UNKNOWN: "not provable yet (a later reconcile may settle it)",
}


async def reconcile(args: argparse.Namespace, out: TextIO) -> int:
    """Reconcile ``args.journal`` and print what each unknown row became."""
    policy = ReconcilePolicy(strict=args.strict)
    async with open_client(emulator=False) as client:
        report = await client.reconcile(args.journal, policy=policy)
    if args.json:
        rows = [_row(r) for r in report.rows]
        counts = {k.value: v for k, v in report.counts.items()}
        print(json.dumps({"counts": counts, "rows": rows}), file=out)
        return OK
    print(f"{args.journal}: {len(report.rows)} unknown item(s) reconciled", file=out)
    for resolution, n in report.counts.items():
        print(f"  {n:>6} {resolution.value:<14} {_MEANING[resolution]}", file=out)
    for row in report.rows:
        print(f"  {printable(_line(row))}", file=out)
    return OK


def _line(row: Reconciled) -> str:
    detail = row.request_id or ", ".join(row.candidates) or row.reason or ""
    if row.resolution is Resolution.UNKNOWN and row.bound is not None:
        when = datetime.fromtimestamp(row.bound, UTC).isoformat(timespec="seconds")
        detail += f" (provable after {when})"
    return f"{row.key} {row.resolution.value}: {detail}"


def _row(row: Reconciled) -> dict[str, object]:
    return {
        "key": row.key,
        "resolution": row.resolution.value,
        "request_id": row.request_id,
        "candidates": list(row.candidates),
        "reason": row.reason,
        "bound": row.bound,
    }
