"""Reconcile chaos: lost submit answers, fal's 5xx and two kill -9, then resumes that reconcile.

Usage::

    python benchmarks/reconcile_chaos.py [--items 2000] [--lags 0 5] [--webhooks]

For each history lag (and, with ``--webhooks``, once more webhook-tracked at the last lag),
2,000 items run through a journaled batch process (``_reconcile_worker.py``) against an
emulator in this process with 5% of submit answers lost after the job was queued
(``connection_reset`` with ``reset_after_enqueue``), 5% of fal's own 5xx on submit, status and
result, the batch killed with SIGKILL twice (at a third and at two thirds of the submits), then
resumed until no item is left unknown, waiting out the start-timeout bound when reconciling
says a row is not provable yet. It asserts, from the emulator's own counters: no input billed
twice; every item downloaded or reported ambiguous; for the tracked variant, no status stream
opened, forged and replayed deliveries refused, each request id's webhook recorded once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fal_edit_async.emulator import Emulator, Faults

HERE = Path(__file__).parent
START_TIMEOUT, LONGEST_RUN = 5.0, 3.0


def faults(seed: int, webhooks: bool) -> Faults:
    extra = {"webhook_duplicate": 0.05, "webhook_tampered": 0.02, "webhook_stale": 0.02}
    return Faults(
        seed=seed,
        routes=frozenset({"submit", "status", "result"}),
        connection_reset=0.05,
        reset_after_enqueue=True,
        server_error=0.05,
        routes_by_kind={"connection_reset": {"submit"}},
        **(extra if webhooks else {}),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_run(config_path: Path, emu: Emulator, kill_at: int | None) -> dict[str, Any] | None:
    """Run the batch process; SIGKILL it once the emulator has seen ``kill_at`` submits."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "_reconcile_worker.py"),
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    if kill_at is not None:
        done = asyncio.ensure_future(process.wait())
        reached = asyncio.ensure_future(emu.wait_until(lambda: emu.counters.submits >= kill_at))
        await asyncio.wait({done, reached}, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            process.send_signal(signal.SIGKILL)
        reached.cancel()
        await process.wait()
        return None
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"the batch process failed with {process.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def rows(journal: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(journal) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT key, state, sent_at, start_timeout FROM items").fetchall()


async def variant(n: int, lag: float, webhooks: bool, seed: int) -> dict[str, Any]:
    settle = lag + 2.0
    async with Emulator(
        workers=64,
        processing_time=0.05,
        fast_images=True,
        faults=faults(seed, webhooks),
        history_lag=lag,
        webhook_retry_base=0.5,
    ) as emu:
        root = Path(tempfile.mkdtemp(prefix="reconcile-chaos-"))
        config = {
            "queue_url": emu.queue_url,
            "rest_url": emu.rest_url,
            "api_key": emu.api_key,
            "jwks_url": emu.jwks_url,
            "journal": str(root / "batch.journal"),
            "out": str(root / "out"),
            "items": n,
            "start_timeout": START_TIMEOUT,
            "longest_run": LONGEST_RUN,
            "settle": settle,
            "webhook_port": free_port() if webhooks else None,
        }
        config_path = root / "config.json"
        config_path.write_text(json.dumps(config))
        began = time.monotonic()
        await one_run(config_path, emu, n // 3)
        await one_run(config_path, emu, 2 * n // 3)
        kills_at = emu.counters.submits
        resumes: list[dict[str, Any]] = []
        for _ in range(8):
            result = await one_run(config_path, emu, None)
            assert result is not None
            resumes.append(result)
            if result["states"].get("unknown", 0) == 0:
                break
            # Rows not provable yet: wait out the start-timeout bound, then resume again.
            bound = max(
                r["sent_at"] + r["start_timeout"] + LONGEST_RUN + settle
                for r in rows(Path(config["journal"]))
                if r["state"] == "unknown" and r["sent_at"] and r["start_timeout"]
            )
            await asyncio.sleep(max(0.0, bound - time.time()) + 0.1)
        await emu.wait_until(lambda: emu.counters.in_flight == 0)
        final = rows(Path(config["journal"]))
        by_state: dict[str, int] = {}
        for r in final:
            by_state[r["state"]] = by_state.get(r["state"], 0) + 1
        billed = emu.counters.billed_by_input
        twice = sum(1 for v in billed.values() if v > 1)
        with sqlite3.connect(config["journal"]) as db:
            recorded = db.execute("SELECT count(*) FROM webhooks").fetchone()[0]
            distinct = db.execute("SELECT count(DISTINCT request_id) FROM webhooks").fetchone()[0]
        report = {
            "items": n,
            "history_lag": lag,
            "webhooks": webhooks,
            "runs": 2 + len(resumes),
            "submits_at_second_kill": kills_at,
            "elapsed_s": round(time.monotonic() - began, 1),
            "submits": emu.counters.submits,
            "billed": emu.counters.billed,
            "inputs_billed_twice": twice,
            "final_states": by_state,
            "reconciled_by_run": [r["reconciled"] for r in resumes],
            "faults": dict(emu.counters.faults_injected),
            "streams_opened": emu.counters.streams_opened,
            "status_polls": emu.counters.status_polls,
            "webhook_posts": dict(emu.counters.webhook_posts),
            "webhook_rows": recorded,
            "receiver_last_run": resumes[-1]["receiver"],
        }
        downloaded = by_state.get("downloaded", 0)
        ambiguous = by_state.get("ambiguous", 0)
        assert twice == 0, report
        assert downloaded + ambiguous == n == len(final), report
        if webhooks:
            assert emu.counters.streams_opened == 0, report
            assert recorded == distinct, report
        return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--lags", type=float, nargs="+", default=[0.0, 5.0])
    parser.add_argument("--webhooks", action="store_true", help="also a webhook-tracked run")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    plan = [(lag, False) for lag in args.lags]
    if args.webhooks:
        plan.append((args.lags[-1], True))
    for lag, tracked in plan:
        report = await variant(args.items, lag, tracked, args.seed)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
