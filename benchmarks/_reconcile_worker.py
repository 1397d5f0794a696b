"""One batch process of ``reconcile_chaos.py``: a journaled ``edit_many`` that may be killed.

Usage::

    python benchmarks/_reconcile_worker.py CONFIG.json

CONFIG holds the emulator's URLs and key, the journal, the output folder, the item count, the
reconcile policy's seconds and, for the webhook-tracked variant, the receiver's port (the
receiver runs in this process, with this batch's journal as its sink). At the end it prints
one JSON line: item states, what reconciling did, the receiver's statistics.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from _contenders import tiny_png_data_uri
from aiohttp import web

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    Journal,
    Limits,
    ReconcilePolicy,
    RetryPolicy,
)


def items(n: int) -> list[tuple[str, EditImageInput]]:
    uri = tiny_png_data_uri()
    return [
        (f"item{i:05d}", EditImageInput(prompt=f"chaos {i}", image_urls=[uri])) for i in range(n)
    ]


async def main(config: dict[str, Any]) -> None:
    policy = ReconcilePolicy(
        start_timeout=config["start_timeout"],
        longest_run=config["longest_run"],
        settle=config["settle"],
        ledger_poll=5.0,
    )
    client = AsyncClient(
        api_key=config["api_key"],
        queue_url=config["queue_url"],
        rest_url=config["rest_url"],
        api_url=config["rest_url"],
        retry=RetryPolicy(base_delay=0.05, max_delay=0.5),
        limits=Limits(jobs=64, downloads=32),
    )
    stats: dict[str, Any] = {}
    options: dict[str, Any] = {}
    async with client, Journal(config["journal"]) as journal:
        runner = None
        if config.get("webhook_port"):
            from fal_edit_async.webhooks import STATISTICS, JwksCache, create_app

            jwks = JwksCache(config["jwks_url"])
            app = create_app(jwks=jwks, sink=journal, path="/hook")
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", config["webhook_port"]).start()
            options["webhook_url"] = f"http://127.0.0.1:{config['webhook_port']}/hook"
        async with client.edit_many(
            items(config["items"]),
            journal=journal,
            download_to=config["out"],
            reconcile=policy,
            **options,
        ) as batch:
            states = Counter([r.state.value async for r in batch])
        if runner is not None:
            receiver = app[STATISTICS]
            stats = {
                "accepted": receiver.accepted,
                "duplicates": receiver.duplicates,
                "rejected": dict(receiver.rejected),
            }
            await runner.cleanup()
            await jwks.aclose()
    report = batch.reconciled
    print(
        json.dumps(
            {
                "states": dict(states),
                "reconciled": {k.value: v for k, v in report.counts.items()},
                "history_seen": report.history_seen,
                "next_bound": report.next_bound,
                "receiver": stats,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
