"""Many workers, one PostgreSQL ledger: SIGKILLs, a global cap, and the cost against SQLite.

Part 1 (``workers``): four worker processes (``_pg_worker.py``) run the same 2,000 items on
one PostgreSQL ledger against one emulator (in this process, billing like fal), at most
``--cap`` jobs in flight across all of them and ``--concurrency`` each. Two workers are
killed with SIGKILL at random moments (after a random number of submits, picked by waiting on
the emulator's counters, never by sleeping); one of them is restarted. Then: every item is
downloaded and its file is in the folder once, no input was billed twice (the emulator's
``billed_by_input``), and the most jobs outstanding on the emulator at once (submitted, not
finished) never passed the cap. Items left ``unknown`` (a kill between a POST and the commit
of fal's answer: the documented gap) are counted apart, never resubmitted.

Part 2 (``speed``): one worker, 1,000 items at 64 in flight, on PostgreSQL and on SQLite,
alternated ``--rounds`` times; the median wall times and their ratio (target: <= 1.2).

Needs a PostgreSQL server: ``FAL_EDIT_TEST_POSTGRES=postgresql://...`` (``source .ci/postgres
&& postgres_start`` starts a throw-away one and sets it).

Usage::

    python benchmarks/pg_workers.py [--items 2000] [--cap 40] [--seed 1] [--part workers|speed]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psycopg
from anyio.streams.text import TextReceiveStream

from fal_edit_async import JournalState, PostgresJournal
from fal_edit_async.emulator import Emulator

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_pg_worker.py"
ENV = "FAL_EDIT_TEST_POSTGRES"


def fresh_schema(dsn: str) -> str:
    """A new schema on the server, as an address whose search path is it."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"


class Worker:
    """One worker process, its stdout collected (``submitted KEY`` lines, then a summary)."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.command = command
        self.process: anyio.abc.Process | None = None
        self.output = ""
        self.killed = False
        self.done = anyio.Event()

    async def run(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
        async with await anyio.open_process(
            self.command, env=env, cwd=HERE, stderr=None
        ) as process:
            self.process = process
            assert process.stdout is not None
            async for chunk in TextReceiveStream(process.stdout):
                self.output += chunk
            await process.wait()
        self.done.set()

    def kill(self) -> None:
        assert self.process is not None
        self.killed = True
        self.process.send_signal(signal.SIGKILL)

    def summary(self) -> dict[str, Any] | None:
        for line in self.output.splitlines():
            if line.startswith("summary "):
                return dict(json.loads(line.removeprefix("summary ")))
        return None


def peak_outstanding(emu: Emulator, end: float) -> int:
    """The most jobs submitted and not yet finished at any moment (a job never finished
    counts until ``end``)."""
    edges: list[tuple[float, int]] = []
    for job in emu.jobs.values():
        edges.append((job.submitted_at, 1))
        edges.append((job.completed_at if job.completed_at is not None else end, -1))
    edges.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


async def workers_part(args: argparse.Namespace, dsn: str, root: Path) -> bool:
    rng = random.Random(args.seed)
    ledger = fresh_schema(dsn)
    out = root / "out"
    async with Emulator(
        workers=max(64, args.cap * 2), processing_time=args.processing_time, fast_images=True
    ) as emu:

        def command() -> list[str]:
            return [
                sys.executable,
                str(WORKER),
                emu.queue_url,
                emu.api_key,
                ledger,
                str(out),
                str(args.items),
                str(args.concurrency),
                "--lease",
                str(args.lease),
                "--max-in-flight",
                str(args.cap),
            ]

        start = anyio.current_time()
        workers = [Worker(f"w{i}", command()) for i in range(4)]
        kills = sorted(rng.sample(range(args.items // 5, args.items * 3 // 5), 2))
        async with anyio.create_task_group() as tg:
            for w in workers:
                tg.start_soon(w.run)
            for victim, at in zip(workers[:2], kills, strict=True):
                await emu.wait_until(lambda at=at: emu.counters.submits >= at)
                victim.kill()
                print(f"SIGKILL {victim.name} after {emu.counters.submits} submits")
            await workers[0].done.wait()
            restarted = Worker("w0-restarted", command())
            workers.append(restarted)
            tg.start_soon(restarted.run)
            print("restarted w0")
        elapsed = anyio.current_time() - start
        end = max((j.completed_at or 0.0) for j in emu.jobs.values())
        peak = peak_outstanding(emu, end)
        billed = emu.counters.billed_by_input
        downloads = emu.counters.downloads
        submits = emu.counters.submits

    async with PostgresJournal(ledger, read_only=True) as journal:
        entries = await journal.entries()
    by_state: dict[str, int] = {}
    for e in entries:
        by_state[e.state.value] = by_state.get(e.state.value, 0) + 1
    unknown = {e.key for e in entries if e.state is JournalState.UNKNOWN}
    downloaded = [e for e in entries if e.state is JournalState.DOWNLOADED]
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    stems = [f.rsplit("_", 1)[0] for f in files]
    listed = {f.path.name for e in downloaded for f in e.files}

    checks = {
        "every item downloaded or unknown": len(downloaded) + len(unknown) == args.items,
        "one file per downloaded item, as listed": sorted(listed) == files
        and len(files) == len(downloaded),
        "no output named twice": len(set(stems)) == len(stems),
        "no input billed twice": max(billed.values(), default=0) <= 1,
        f"peak outstanding <= cap {args.cap}": peak <= args.cap,
        "survivors ended cleanly": all(w.summary() is not None for w in workers if not w.killed),
    }
    print(
        json.dumps(
            {
                "items": args.items,
                "cap": args.cap,
                "concurrency_per_worker": args.concurrency,
                "lease_s": args.lease,
                "kills_after_submits": kills,
                "elapsed_s": round(elapsed, 2),
                "submits": submits,
                "emulator_downloads": downloads,
                "peak_outstanding": peak,
                "ledger_states": by_state,
                "unknown": len(unknown),
                "files": len(files),
                "workers": {w.name: w.summary() for w in workers},
            },
            indent=1,
        )
    )
    for name, ok in checks.items():
        print(("PASS " if ok else "FAIL ") + name)
    return all(checks.values())


async def one_batch(emu: Emulator, journal: str, root: Path, n: int) -> float:
    out = root / f"out-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, str(WORKER), emu.queue_url, emu.api_key, journal, str(out)]
    worker = Worker("speed", [*command, str(n), "64"])
    await worker.run()
    summary = worker.summary()
    if summary is None or summary["completed"] != n:
        raise RuntimeError(f"the batch did not complete: {summary}\n{worker.output[-500:]}")
    return float(summary["elapsed"])


async def speed_part(args: argparse.Namespace, dsn: str, root: Path) -> bool:
    times: dict[str, list[float]] = {"postgres": [], "sqlite": []}
    async with Emulator(workers=64, processing_time=args.processing_time, fast_images=True) as emu:
        for i in range(args.rounds):
            for kind in ("postgres", "sqlite") if i % 2 == 0 else ("sqlite", "postgres"):
                journal = fresh_schema(dsn) if kind == "postgres" else str(root / f"j{i}.sqlite")
                times[kind].append(await one_batch(emu, journal, root, args.speed_items))
    pg, lite = statistics.median(times["postgres"]), statistics.median(times["sqlite"])
    ratio = pg / lite
    print(
        json.dumps(
            {
                "items": args.speed_items,
                "in_flight": 64,
                "processing_time_s": args.processing_time,
                "postgres_s": [round(t, 2) for t in times["postgres"]],
                "sqlite_s": [round(t, 2) for t in times["sqlite"]],
                "median_ratio": round(ratio, 3),
            },
            indent=1,
        )
    )
    ok = ratio <= 1.2
    print(("PASS " if ok else "FAIL ") + f"PostgreSQL / SQLite wall time {ratio:.2f} <= 1.2")
    return ok


async def main(args: argparse.Namespace) -> int:
    dsn = os.environ.get(ENV)
    if not dsn:
        print(f"set {ENV} to a PostgreSQL server (source .ci/postgres && postgres_start)")
        return 2
    ok = True
    with tempfile.TemporaryDirectory(prefix="fal-pg-workers-") as tmp:
        if args.part in (None, "workers"):
            ok &= await workers_part(args, dsn, Path(tmp) / "workers")
        if args.part in (None, "speed"):
            ok &= await speed_part(args, dsn, Path(tmp))
    return 0 if ok else 1


def _cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--cap", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--processing-time", type=float, default=0.2)
    parser.add_argument("--speed-items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--part", choices=("workers", "speed"))
    return anyio.run(main, parser.parse_args())


if __name__ == "__main__":
    sys.exit(_cli())
