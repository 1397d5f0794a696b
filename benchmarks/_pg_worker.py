"""One worker of ``pg_workers.py``: a batch of N keyed items on a shared (or SQLite) ledger.

Usage::

    python benchmarks/_pg_worker.py QUEUE_URL API_KEY JOURNAL OUT N CONCURRENCY
        [--lease S] [--max-in-flight N]

``JOURNAL`` is a ``postgresql://`` address or a SQLite file. Prints ``submitted KEY`` as each
submit's answer is in the ledger, then one ``summary {json}`` line (counts and wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio
from _contenders import tiny_png_data_uri

from fal_edit_async import (
    AsyncClient,
    BatchEvent,
    EditImageInput,
    ItemSubmitted,
    Journal,
    PostgresJournal,
    RetryPolicy,
)


def items(n: int) -> list[tuple[str, EditImageInput]]:
    """The benchmark's items: ``n`` distinct keyed edits of one tiny image."""
    image = tiny_png_data_uri()
    return [
        (f"item{i:05d}", EditImageInput(prompt=f"pixel art #{i}", image_urls=[image]))
        for i in range(n)
    ]


def _report(event: BatchEvent) -> None:
    if isinstance(event, ItemSubmitted):
        print("submitted", event.key, flush=True)


async def main(args: argparse.Namespace) -> int:
    journal: Any
    if args.journal.startswith("postgresql://"):
        journal = PostgresJournal(args.journal, lease=args.lease)
    else:
        journal = Journal(args.journal)
    started = time.monotonic()
    async with (
        journal,
        AsyncClient(
            api_key=args.api_key,
            queue_url=args.queue_url,
            rest_url=args.queue_url,
            retry=RetryPolicy(wait=False),
        ) as client,
        client.edit_many(
            items(args.n),
            journal=journal,
            download_to=args.out,
            concurrency=args.concurrency,
            max_in_flight=args.max_in_flight,
            on_event=_report,
        ) as batch,
    ):
        async for _ in batch:
            pass
    summary = batch.summary()
    figures = {
        "completed": summary.completed,
        "failed": summary.failed,
        "unknown": summary.unknown,
        "elapsed": time.monotonic() - started,
    }
    print("summary", json.dumps(figures), flush=True)
    return 0


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for name in ("queue_url", "api_key", "journal", "out"):
        parser.add_argument(name)
    parser.add_argument("n", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--max-in-flight", type=int, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(anyio.run(main, _args(sys.argv[1:])))
