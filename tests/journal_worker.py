"""A batch run in its own process, for the crash-and-resume test (not collected by pytest).

Usage: python tests/journal_worker.py QUEUE_URL API_KEY JOURNAL OUT N CONCURRENCY DOWNLOADS

JOURNAL may be a ``postgresql://`` address: the worker then shares it, with leases of
``$LEASE`` seconds (default 30) and at most ``$MAX_IN_FLIGHT`` jobs in flight across workers.

Prints one line per journaled step (``submitted KEY``, ``completed KEY``, ``downloaded KEY``),
flushed at once, so the test knows what the journal holds before it kills this process;
then ``summary {json}``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from typing import Any

import anyio
from PIL import Image

from fal_edit_async import (
    AsyncClient,
    BatchEvent,
    EditImageInput,
    ItemCompleted,
    ItemDownloaded,
    ItemSubmitted,
    PostgresJournal,
    RetryPolicy,
)


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _report(event: BatchEvent) -> None:
    kinds = {ItemSubmitted: "submitted", ItemCompleted: "completed", ItemDownloaded: "downloaded"}
    kind = kinds.get(type(event))
    if kind is not None:
        print(kind, event.key, flush=True)


async def main(argv: list[str]) -> int:
    queue_url, api_key, where, out, n, concurrency, downloads = argv
    journal: Any = where
    if where.startswith("postgresql://"):
        journal = PostgresJournal(where, lease=float(os.environ.get("LEASE", "30")))
    cap = os.environ.get("MAX_IN_FLIGHT")
    image = _png()
    items = [
        (f"item{i:04d}", EditImageInput(prompt=f"pixel art #{i}", image_urls=[image]))
        for i in range(int(n))
    ]
    async with (
        AsyncClient(
            api_key=api_key, queue_url=queue_url, rest_url=queue_url, retry=RetryPolicy(wait=False)
        ) as client,
        client.edit_many(
            items,
            journal=journal,
            download_to=out,
            concurrency=int(concurrency),
            downloads=int(downloads),
            max_in_flight=int(cap) if cap else None,
            on_event=_report,
        ) as batch,
    ):
        async for _ in batch:
            pass
    summary = batch.summary()
    print("summary", json.dumps({"completed": summary.completed, "failed": summary.failed}))
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1:]))
