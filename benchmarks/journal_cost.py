"""What durable journal writes cost: a journaled ``edit_many`` batch, timed N times.

The journal fsyncs (``PRAGMA synchronous=FULL``) around each paid submit: once for the
``submitting`` row before the POST, once for ``submitted`` with the request id. This times
the batch that pays for it: 1,000 items (distinct prompts, so a row each) at 256 in flight,
downloaded to a folder on disk and checksummed, with the journal next to it, against the
emulator in its own process (instant jobs, 256 workers). It is ``_contenders.py``'s
``ours-journal`` contender, measured as ``run.py`` measures the others: wall time and CPU
per job of the client process (``getrusage(RUSAGE_SELF)``, every thread), and the
emulator's CPU.

The client is whatever copy of ``fal_edit_async`` PYTHONPATH selects; the emulator is
always this checkout's, so two copies are measured against the same server. With
``--strace`` (if ``strace`` is installed) one more round runs under
``strace -f -c -e trace=fsync,fdatasync`` and counts the client's fsyncs; its times are
not used. ``--no-durable`` times this checkout with the durable writes patched to
``synchronous=NORMAL``, to tell the fsyncs from everything else that changed.

Usage::

    python benchmarks/journal_cost.py                        # this checkout, median of 3
    PYTHONPATH=/tmp/before python benchmarks/journal_cost.py --strace
    python benchmarks/journal_cost.py --no-durable --repeats 5 --items 2000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _procs import HERE, PYTHON, ROOT, JsonProcess, machine_cpu, start_emulator, wait_for_quiet
from _results import metrics

ITEMS = 1000
CONCURRENCY = 256
REPEATS = 3
#: One warm-up wave at full concurrency (its own journal and folder), as run.py does.
WARMUP = CONCURRENCY
TIMEOUT = 300.0
#: Wait (up to this many seconds) for other processes to use less than a fifth of a core.
SETTLE = 15.0
#: A round during which other processes used more than this % of a core is flagged.
LOADED = 25.0
_CALLS = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$")


def client_copy() -> str:
    """Which fal_edit_async the client process imports, and its git commit."""
    probe = "import fal_edit_async, pathlib; print(pathlib.Path(fal_edit_async.__file__).parent)"
    found = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, check=True)
    package = Path(found.stdout.strip())
    commit = subprocess.run(
        ["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{package.parent} (git {commit or 'unknown'})"


def emulator_env() -> dict[str, str]:
    """This checkout first on the path: the same emulator whatever copy the client is."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def one_round(spec: dict[str, Any], strace_to: Path | None = None) -> dict[str, Any]:
    """One timed round against a fresh emulator; as ``_procs.run_contender``, plus strace."""
    argv = [PYTHON, str(HERE / "_contenders.py"), json.dumps(spec)]
    if strace_to is not None:
        argv = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(strace_to), *argv]
    emulator_args = ["--workers", str(spec["concurrency"]), "--processing-time", "0"]
    with JsonProcess("ours-journal", argv) as child:
        emulator, urls = start_emulator([*emulator_args, "--fast-images"], TIMEOUT, emulator_env())
        with emulator:
            child.send(json.dumps(urls))
            child.receive(TIMEOUT)  # ready: set up and warmed up
            before = emulator.ask("counters", TIMEOUT)
            before["machine_busy"], before["machine_steal"] = machine_cpu()
            child.send("go")
            report = child.receive(TIMEOUT)
            after = emulator.ask("stats", TIMEOUT)
            after["machine_busy"], after["machine_steal"] = machine_cpu()
            emulator.send("quit")
    return {**report, "before": before, "after": after}


def fsync_calls(summary: Path) -> dict[str, int]:
    """The fsync and fdatasync call counts in an ``strace -c`` summary."""
    counts = {"fsync": 0, "fdatasync": 0}
    for line in summary.read_text().splitlines():
        match = _CALLS.match(line)
        if match:
            counts[match.group(2)] = int(match.group(1))
    return counts


def spec_for(
    items: int, concurrency: int, warmup: int, durable: bool, folder: str
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "contender": "ours-journal",
        "jobs": items,
        "concurrency": concurrency,
        "warmup": warmup,
        "download_dir": folder,
    }
    if not durable:
        spec["durable"] = False
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--no-durable", action="store_true", help="patch FULL syncs to NORMAL")
    parser.add_argument("--strace", action="store_true", help="one more round counting fsyncs")
    parser.add_argument(
        "--dir", type=Path, help="where the journal and files go (default: a temp dir in /tmp)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.strace and shutil.which("strace") is None:
        parser.error("--strace needs strace (apt-get install strace)")
    copy = client_copy()
    label = "durable writes patched to NORMAL" if args.no_durable else "as shipped"
    print(
        f"journal cost: {args.items} items at {args.concurrency} in flight, instant jobs;"
        f" client {copy}, {label}",
        flush=True,
    )
    rounds: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        wait_for_quiet(0.2, SETTLE)
        with tempfile.TemporaryDirectory(prefix="fal-journal-cost-", dir=args.dir) as tmp:
            spec = spec_for(args.items, args.concurrency, WARMUP, not args.no_durable, tmp)
            report = one_round(spec)
        if report["failed"]:
            print(f"  round {repeat + 1} FAILED {report['failed']}: {report['errors'][:2]}")
            return 1
        figures = metrics(report, args.items)
        figures["sys_ms_per_job"] = report.get("cpu_system", 0.0) * 1000 / args.items
        rounds.append(figures)
        loaded = figures["other_cpu_pct"] > LOADED
        note = (
            f"  [other processes used {figures['other_cpu_pct']:.0f}% of a core]" if loaded else ""
        )
        print(
            f"  #{repeat + 1}  wall {figures['wall']:5.2f} s  cpu {figures['cpu_ms_per_job']:4.2f}"
            f" ms/job (kernel {figures['sys_ms_per_job']:4.2f})"
            f"  {figures['jobs_per_s']:4.0f} jobs/s"
            f"  emulator cpu {figures['emu_cpu_pct']:3.0f}%{note}",
            flush=True,
        )
    result: dict[str, Any] = {
        "client": copy,
        "durable": not args.no_durable,
        "items": args.items,
        "concurrency": args.concurrency,
        "rounds": rounds,
    }
    for key in ("wall", "cpu_ms_per_job", "sys_ms_per_job", "jobs_per_s", "emu_cpu_pct"):
        result[key] = statistics.median(r[key] for r in rounds)
    print(
        f"median of {len(rounds)}: wall {result['wall']:.2f} s, CPU {result['cpu_ms_per_job']:.2f}"
        f" ms/job (kernel {result['sys_ms_per_job']:.2f}), {result['jobs_per_s']:.0f} jobs/s",
        flush=True,
    )
    if args.strace:
        with tempfile.TemporaryDirectory(prefix="fal-journal-cost-", dir=args.dir) as tmp:
            summary = Path(tmp) / "strace.txt"
            spec = spec_for(args.items, args.concurrency, 0, not args.no_durable, tmp)
            started = time.monotonic()
            report = one_round(spec, strace_to=summary)
            calls = fsync_calls(summary)
        total = sum(calls.values())
        result["fsyncs"] = calls
        print(
            f"under strace (no warm-up, {time.monotonic() - started:.1f} s): {calls['fsync']}"
            f" fsync + {calls['fdatasync']} fdatasync = {total / args.items:.2f} per job",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
