"""CLI chaos: ``fal-edit batch`` interrupted, killed and started twice, all on one journal.

The CLI promises that a journaled batch never pays twice and loses nothing, however it is
stopped. This run holds it to that, with the CLI as real subprocesses
(``python -m fal_edit_async batch MANIFEST --journal J --out OUT --json``) and one emulator in
this process, on the same event loop, that bills like fal: half of the cancels of running
jobs are ignored (``cancel_running=0.5``: the job finishes and bills), and small rates of
429s, fal 5xx (not on submits), gateway 502s (on submits), dropped status streams and
truncated downloads hit every run. A few submits get their connection reset after fal
queued the job (scheduled, one run in two of phases 1 and 2): the documented gap, whose
items end ``unknown``.

All phases run on the same manifest, journal and output folder:

1. runs interrupted by SIGINT, SIGTERM or SIGHUP (in turn) at a random moment, picked by
   waiting on the emulator's counters (after k submits, completions or downloads), never
   by sleeping; every fifth run sends the signal twice (the second exits at once). Exit
   130 / 143 / 129, or 0 / 1 when the run finished before the signal;
2. runs killed with SIGKILL the same way; one in three while the emulator holds downloads
   after their headers, so the kill leaves temp files behind;
3. two runs started together: exactly one refuses with exit 2 and "journal in use", the
   other proceeds (0, or 1 with only ``unknown`` items);
4. a final resume, with ``--resubmit-unknown`` when the journal holds unknown rows, which
   must exit 0.

Then: every item downloaded and each file a valid image; no input billed more often than
the manifest holds it, but for unknown rows resubmitted (counted apart: the documented
gap); no temp or unlisted file in the output folder; ``fal-edit journal show --json``
agrees with the files on disk. It prints PASS / FAIL lines and exits 1 on any FAIL.

The signal moments come from a seeded ``random.Random``; the processes' timing does not,
so two runs with one seed interrupt at the same counts, not at the same item. Everything
talks to 127.0.0.1 only, and every wait has an ``anyio.fail_after`` backstop.

Usage::

    python benchmarks/cli_chaos.py                 # 1,000 items, 10 + 10 interrupted runs
    python benchmarks/cli_chaos.py --quick         # 200 items, 3 + 3 runs
    python benchmarks/cli_chaos.py --items 500 --runs 5 --seed 7 --keep /tmp/chaos
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
from PIL import Image

from fal_edit_async import Journal, JournalEntry
from fal_edit_async.emulator import Emulator, Faults

ITEMS = 1000
QUICK_ITEMS = 200
RUNS = 10
QUICK_RUNS = 3
SEED = 2025
CONCURRENCY = 64
#: Fewer workers than jobs in flight, so that a signal finds jobs both queued and running.
WORKERS = 16
#: Each job runs 50 ms and logs twice, so status streams see it running (and can drop).
PROCESSING_TIME = 0.05
#: The interrupting counter moves by 1..items/12 from the run's start.
TRIGGER_SPAN = 12
#: Backstops: one CLI run, one `journal show`, and the whole scenario.
RUN_TIMEOUT = 240.0
SHOW_TIMEOUT = 60.0
TOTAL_TIMEOUT = 1500.0

#: The small input images (name, size, colour).
IMAGES = (
    ("red", (32, 24), (200, 40, 40)),
    ("green", (24, 32), (40, 180, 60)),
    ("blue", (40, 40), (40, 60, 200)),
    ("grey", (16, 48), (128, 128, 128)),
)
FORMATS = ("png", "webp", "jpeg")
_NOT_SUBMIT = {"status", "stream", "result", "cancel", "download"}
_ACCEPTED = re.compile(r"fal accepted the cancel of (\d+) jobs?")


def chaos_faults(seed: int) -> Faults:
    """Faults the client retries safely; the resets that lose a submit answer are scheduled."""
    return Faults(
        seed=seed,
        routes={"submit", *_NOT_SUBMIT},
        routes_by_kind={"server_error": _NOT_SUBMIT, "ingress_error": {"submit"}},
        rate_limit=0.02,
        retry_after=0.2,
        server_error=0.02,
        ingress_error=0.02,
        stream_drop=0.03,
        truncated_download=0.02,
    )


# -- the manifest ------------------------------------------------------------------------


@attrs.frozen
class Line:
    """One manifest line, as written to the file."""

    payload: Mapping[str, Any]

    @property
    def prompt(self) -> str:
        return str(self.payload["prompt"])

    @property
    def num_images(self) -> int:
        return int(self.payload.get("num_images", 1))


def write_inputs(folder: Path) -> None:
    """The few small PNG inputs every line edits."""
    folder.mkdir(parents=True)
    for name, size, colour in IMAGES:
        Image.new("RGB", size, colour).save(folder / f"{name}.png")


def manifest_lines(n: int, rng: random.Random) -> list[Line]:
    """``n`` lines: distinct prompts, one in three keyed, and a few identical unkeyed lines.

    Identical lines are distinct items (the journal numbers repeats ``~2``...), so fal may
    bill their shared input once per line.
    """
    repeats = max(2, n // 200)
    lines = []
    for i in range(n - repeats):
        name = IMAGES[i % len(IMAGES)][0]
        payload: dict[str, Any] = {
            "prompt": f"studio background #{i}",
            "inputs": [f"img/{name}.png"],
            "num_images": 1 + (i % 7 == 0),
            "output_format": FORMATS[i % 3],
        }
        if i % 3 == 0:
            payload = {"key": f"k{i:05d}", **payload}
        lines.append(Line(payload))
    unkeyed = [line for line in lines if "key" not in line.payload]
    for _ in range(repeats):
        twin = rng.choice(unkeyed)
        lines.insert(rng.randrange(len(lines) + 1), twin)
    return lines


# -- running the CLI ---------------------------------------------------------------------


@attrs.define
class Output:
    """A child's stdout and stderr as they arrive, and whether it has exited."""

    out: bytearray = attrs.field(factory=bytearray)
    err: bytearray = attrs.field(factory=bytearray)
    exited: anyio.Event = attrs.field(factory=anyio.Event)
    cancelling: anyio.Event = attrs.field(factory=anyio.Event)
    returncode: int | None = None

    async def pump(self, stream: anyio.abc.ByteReceiveStream | None, into: bytearray) -> None:
        if stream is None:
            return
        async for chunk in stream:
            into.extend(chunk)
            # The CLI's notice of the first signal: "Ctrl-C: cancelling 12 jobs on fal..."
            if into is self.err and b": cancelling " in into[-len(chunk) - 32 :]:
                self.cancelling.set()

    async def wait(self, process: anyio.abc.Process) -> None:
        self.returncode = await process.wait()
        self.exited.set()

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.out.decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def accepted_cancels(self) -> int:
        match = _ACCEPTED.search(self.err.decode(errors="replace"))
        return int(match.group(1)) if match else 0

    def tail(self, lines: int = 6) -> str:
        text = self.err.decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])


@attrs.define
class Interrupt:
    """When and how to stop one run."""

    signum: int
    describe: str
    reached: Callable[[], bool]
    twice: bool = False
    hold_downloads: bool = False


@attrs.define
class Run:
    """One CLI invocation and what it did."""

    label: str
    phase: int
    interrupt: Interrupt | None
    returncode: int | None = None
    expected: tuple[int, ...] = ()
    signals: int = 0
    finished_first: bool = False
    seconds: float = 0.0
    submits: int = 0
    billed: int = 0
    cancels: int = 0
    ignored: int = 0
    accepted_cancels: int = 0
    resets: int = 0
    states: Mapping[str, int] = attrs.field(factory=dict)
    unknown_keys: frozenset[str] = frozenset()
    #: Rows this run left ``submitting`` (the next run makes them ``unknown``), and of
    #: those, how many have a job on fal that this run's submit created.
    left_submitting: int = 0
    left_with_job: int = 0
    stale_parts: int = 0
    output: Output = attrs.field(factory=Output)

    @property
    def ok(self) -> bool:
        return self.returncode in self.expected


def _name(signum: int) -> str:
    return signal.Signals(signum).name


async def first_of(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Return as soon as one of ``waits`` returns; cancel the others."""
    async with anyio.create_task_group() as tg:

        async def one(wait: Callable[[], Awaitable[Any]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(one, wait)


class Scenario:
    """The emulator, the files, and the CLI invocations of one chaos run."""

    def __init__(self, emu: Emulator, root: Path, items: int, rng: random.Random) -> None:
        self.emu, self.root, self.items, self.rng = emu, root, items, rng
        self.manifest = root / "manifest.jsonl"
        self.journal = root / "batch.journal"
        self.out = root / "out"
        self.runs: list[Run] = []
        self.lines = manifest_lines(items, rng)
        write_inputs(root / "img")
        text = "".join(json.dumps(line.payload) + "\n" for line in self.lines)
        self.manifest.write_text(text, encoding="utf-8")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
        emu = self.emu
        return {
            **env,
            "FAL_KEY": emu.api_key,
            "FAL_QUEUE_URL": emu.queue_url,
            "FAL_REST_URL": emu.rest_url,
            # Where reconciling finds a lost submit's job (fal's request history): without
            # it, every unknown row stayed unknown and its resubmit paid twice.
            "FAL_API_URL": emu.api_url,
        }

    def batch_command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fal_edit_async",
            "batch",
            str(self.manifest),
            "--journal",
            str(self.journal),
            "--out",
            str(self.out),
            "--json",
            "--concurrency",
            str(CONCURRENCY),
            *extra,
        ]

    # -- triggers ----------------------------------------------------------------------

    def interrupt(self, signum: int, *, twice: bool = False, hold: bool = False) -> Interrupt:
        """A random moment from now: after k more submits, completions or downloads."""
        counters = self.emu.counters
        k = self.rng.randint(1, max(1, self.items // TRIGGER_SPAN))
        if hold:
            k = self.rng.randint(1, 8)
            return Interrupt(
                signum,
                f"{_name(signum)} with {k} downloads held",
                lambda: self.emu.downloads_held >= k,
                hold_downloads=True,
            )
        kind = self.rng.choice(("submits", "completed", "downloads"))
        base = getattr(counters, kind)
        twice_text = " (twice)" if twice else ""
        return Interrupt(
            signum,
            f"{_name(signum)}{twice_text} after {k} {kind}",
            lambda: getattr(counters, kind) >= base + k,
            twice=twice,
        )

    # -- one invocation ----------------------------------------------------------------

    async def run(self, label: str, phase: int, interrupt: Interrupt | None, *extra: str) -> Run:
        """Run the batch once, stopping it as ``interrupt`` says; record what happened."""
        emu, counters = self.emu, self.emu.counters
        run = Run(label, phase, interrupt)
        before = (counters.submits, counters.billed, counters.cancels, counters.cancels_ignored)
        resets = counters.faults_injected["connection_reset"]
        started = time.monotonic()
        if interrupt is not None and interrupt.hold_downloads:
            emu.hold_downloads()
        try:
            with anyio.fail_after(RUN_TIMEOUT):
                await self._invoke(run, self.batch_command(*extra))
        finally:
            emu.release_downloads()
            emu.clear_faults()
        run.seconds = time.monotonic() - started
        run.submits = counters.submits - before[0]
        run.billed = counters.billed - before[1]
        run.cancels = counters.cancels - before[2]
        run.ignored = counters.cancels_ignored - before[3]
        run.resets = counters.faults_injected["connection_reset"] - resets
        run.accepted_cancels = run.output.accepted_cancels()
        run.returncode = run.output.returncode
        run.expected = self._expected(run)
        run.stale_parts = sum(1 for p in self.out.glob(".*.part")) if self.out.exists() else 0
        show = await self.show()
        run.states = show["counts"]
        run.unknown_keys = frozenset(item["key"] for item in show["unknown"])
        await self._left_submitting(run, started)
        self.runs.append(run)
        print(self._line(run), flush=True)
        return run

    async def _left_submitting(self, run: Run, since: float) -> None:
        """Count the rows left mid-submit, and those whose submit did queue a job.

        Such a job is one this run's submits created that no journal row names (and that
        fal did not cancel), for the same prompt.
        """
        entries = await journal_entries(self.journal)
        named = {e.request_id for e in entries if e.request_id}
        orphans = Counter(
            str(job.input.get("prompt"))
            for job in self.emu.jobs.values()
            if job.submitted_at >= since and job.request_id not in named and not job.cancelled
        )
        prompts = [_prompt(e) for e in entries if e.state.value == "submitting"]
        run.left_submitting = len(prompts)
        run.left_with_job = sum(1 for p in prompts if orphans[p])

    async def _invoke(self, run: Run, command: list[str]) -> None:
        output = run.output
        async with (
            await anyio.open_process(
                command, env=self.env(), cwd=self.root, stdin=subprocess.DEVNULL
            ) as process,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(output.pump, process.stdout, output.out)
            tg.start_soon(output.pump, process.stderr, output.err)
            tg.start_soon(output.wait, process)
            if run.interrupt is not None:
                await self._stop(run, run.interrupt, process)
            await output.exited.wait()

    async def _stop(self, run: Run, interrupt: Interrupt, process: anyio.abc.Process) -> None:
        output = run.output
        await first_of(lambda: self.emu.wait_until(interrupt.reached), output.exited.wait)
        if not self._signal(run, process, interrupt.signum):
            return
        if interrupt.twice:
            await first_of(output.cancelling.wait, output.exited.wait)
            self._signal(run, process, interrupt.signum)

    def _signal(self, run: Run, process: anyio.abc.Process, signum: int) -> bool:
        if run.output.exited.is_set():
            run.finished_first = run.signals == 0
            return False
        try:
            process.send_signal(signal.Signals(signum))
        except ProcessLookupError:
            run.finished_first = run.signals == 0
            return False
        run.signals += 1
        return True

    def _expected(self, run: Run) -> tuple[int, ...]:
        if run.interrupt is None or run.finished_first or run.signals == 0:
            return (0, 1)
        signum = run.interrupt.signum
        if signum == signal.SIGKILL:
            return (-signal.SIGKILL,)
        return ({signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}[signum],)

    def _line(self, run: Run) -> str:
        how = run.interrupt.describe if run.interrupt else "to the end"
        if run.finished_first:
            how += " (finished first)"
        mark = "ok" if run.ok else "UNEXPECTED"
        unknown = run.states.get("unknown", 0)
        left = ""
        if run.left_submitting:
            left = f" (+{run.left_submitting} submitting, {run.left_with_job} queued on fal)"
        if run.resets:
            left += f" (submit answers lost: {run.resets})"
        if run.stale_parts:
            left += f" (temp files left: {run.stale_parts})"
        return (
            f"  {run.label:<10} {how:<38} exit {run.returncode} {mark:<3}"
            f"  submits +{run.submits:<4} billed +{run.billed:<4} cancels {run.cancels}"
            f" (fal accepted {run.accepted_cancels}, ignored {run.ignored})"
            f"  unknown rows {unknown}{left}  {run.seconds:.1f} s"
        )

    async def show(self) -> dict[str, Any]:
        """``fal-edit journal show J --json``, parsed."""
        command = [sys.executable, "-m", "fal_edit_async", "journal", "show", str(self.journal)]
        with anyio.fail_after(SHOW_TIMEOUT):
            done = await anyio.run_process(
                [*command, "--json"], env=self.env(), cwd=self.root, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"journal show exited {done.returncode}: {done.stderr.decode()}")
        shown: dict[str, Any] = json.loads(done.stdout)
        return shown

    # -- the overlap -------------------------------------------------------------------

    async def overlap(self) -> tuple[Run, Run]:
        """Two invocations started together on one journal."""
        counters = self.emu.counters
        before = counters.submits, counters.billed
        runs = (Run("overlap-a", 3, None), Run("overlap-b", 3, None))
        started = time.monotonic()
        with anyio.fail_after(RUN_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for run in runs:
                    tg.start_soon(self._invoke, run, self.batch_command())
        for run in runs:
            run.returncode = run.output.returncode
            run.seconds = time.monotonic() - started
            run.expected = (0, 1, 2)
        show = await self.show()
        for run in runs:
            run.states = show["counts"]
            run.unknown_keys = frozenset(item["key"] for item in show["unknown"])
            run.submits, run.billed = counters.submits - before[0], counters.billed - before[1]
            self.runs.append(run)
            print(self._line(run) + f"  [{run.output.tail(1)[:90]}]", flush=True)
        return runs


# -- checking the result -----------------------------------------------------------------


class Checks:
    """Named pass/fail lines, printed as they are made."""

    def __init__(self) -> None:
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        """Record and print one check."""
        self.failed += not ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))


def image_ok(path: Path) -> bool:
    """The file decodes whole as an image."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError):
        return False
    return True


def file_matches(path: Path, size: int, sha256: str | None) -> bool:
    """The file is on disk with the size and checksum the journal recorded."""
    try:
        if path.stat().st_size != size:
            return False
        if sha256 is not None:
            with path.open("rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except OSError:
        return False
    return True


def disk_report(out: Path, entries: Sequence[JournalEntry]) -> dict[str, Any]:
    """What is in the output folder, next to what the journal lists."""
    on_disk = {p.name for p in out.iterdir()} if out.exists() else set()
    listed = {f.path.name: f for e in entries for f in e.files}
    return {
        "on_disk": on_disk,
        "parts": sorted(n for n in on_disk if n.endswith(".part") or n.startswith(".")),
        "unlisted": sorted(on_disk - set(listed)),
        "missing": sorted(set(listed) - on_disk),
        "elsewhere": sorted(
            n for n, f in listed.items() if f.path.parent.resolve() != out.resolve()
        ),
        "mismatched": sorted(
            n for n, f in listed.items() if not file_matches(f.path, f.size, f.sha256)
        ),
        "invalid": sorted(n for n in on_disk if not image_ok(out / n)),
    }


def _prompt(entry: JournalEntry) -> str:
    return str((entry.input or {}).get("prompt"))


async def journal_entries(path: Path) -> list[JournalEntry]:
    async with Journal(path, read_only=True) as journal:
        return await journal.entries()


async def main(items: int, runs: int, seed: int, root: Path) -> int:
    """Run the four phases on one journal; print the runs and the checks; 0 when all pass."""
    rng = random.Random(seed)
    checks = Checks()
    started = time.monotonic()
    with anyio.fail_after(TOTAL_TIMEOUT):
        async with Emulator(
            workers=WORKERS,
            fast_images=True,
            processing_time=PROCESSING_TIME,
            log_lines=2,
            cancel_running=0.5,
            faults=chaos_faults(seed),
        ) as emu:
            await _phases(Scenario(emu, root, items, rng), runs, checks, started)
    print(f"{'all checks passed' if not checks.failed else f'{checks.failed} checks FAILED'}")
    return 1 if checks.failed else 0


async def _phases(s: Scenario, runs: int, checks: Checks, started: float) -> None:
    emu = s.emu
    assert emu.queue_url.startswith("http://127.0.0.1:"), emu.queue_url
    total_images = sum(line.num_images for line in s.lines)
    print(
        f"cli chaos: {s.items} items ({total_images} images), {runs} + {runs} interrupted runs,"
        f" concurrency {CONCURRENCY}, {WORKERS} emulator workers, cancel_running=0.5"
    )
    print("phase 1: SIGINT / SIGTERM / SIGHUP at a random moment")
    for n in range(runs):
        signum = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)[n % 3]
        if s.rng.random() < 0.5:
            emu.schedule_fault("submit", "connection_reset", after_enqueue=True)
        await s.run(f"signal-{n + 1}", 1, s.interrupt(signum, twice=n % 5 == 4))
    print("phase 2: SIGKILL at a random moment")
    for n in range(runs):
        if s.rng.random() < 0.5:
            emu.schedule_fault("submit", "connection_reset", after_enqueue=True)
        await s.run(f"kill-{n + 1}", 2, s.interrupt(signal.SIGKILL, hold=n % 3 == 2))
    print("phase 3: two runs at once on the same journal")
    first, second = await s.overlap()
    print("phase 4: the final resume")
    shown = await s.show()
    unknown = {item["key"] for item in shown["unknown"]}
    entries = await journal_entries(s.journal)
    gap_prompts = {_prompt(e) for e in entries if e.key in unknown}
    billed_before_final = Counter(emu.counters.billed_by_input)
    extra = ("--resubmit-unknown",) if unknown else ()
    how = ": --resubmit-unknown" if extra else ""
    print(f"  {len(unknown)} unknown rows in the journal{how}")
    final = await s.run("final", 4, None, *extra)
    final.expected = (0,)
    elapsed = time.monotonic() - started
    entries = await journal_entries(s.journal)
    _check(s, checks, (first, second), final, gap_prompts, billed_before_final, entries)
    _figures(s, unknown, elapsed)


def _check(
    s: Scenario,
    checks: Checks,
    overlap: tuple[Run, Run],
    final: Run,
    gap_prompts: set[str],
    billed_before_final: Counter[str],
    entries: Sequence[JournalEntry],
) -> None:
    emu = s.emu
    print("checks:")
    bad = [r for r in s.runs if r.phase in (1, 2) and not r.ok]
    checks.check(
        "interrupted runs exit 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP), -9 (SIGKILL),"
        " or 0/1 if done first",
        not bad,
        "; ".join(f"{r.label}: exit {r.returncode}, expected {r.expected}" for r in bad)
        or f"{sum(r.phase in (1, 2) for r in s.runs)} runs",
    )
    codes = sorted(r.returncode for r in overlap if r.returncode is not None)
    refused = [r for r in overlap if r.returncode == 2 and "journal in use" in r.output.tail(20)]
    others = [r for r in overlap if r not in refused]
    proceeded_ok = all(
        r.returncode in (0, 1)
        and all(rec["status"] in ("completed", "unknown") for rec in r.output.records())
        for r in others
    )
    checks.check(
        "two runs at once: exactly one refuses (exit 2, 'journal in use'), the other proceeds",
        (len(refused) == 1 and proceeded_ok) or (not refused and proceeded_ok),
        f"exit codes {codes}",
    )
    records = final.output.records()
    statuses = Counter(rec["status"] for rec in records)
    checks.check(
        "the final resume exits 0, every item completed",
        final.returncode == 0 and statuses == Counter({"completed": s.items}),
        f"exit {final.returncode}, {dict(statuses)}; {final.output.tail(1)}",
    )

    graceful = [r for r in s.runs if r.phase == 1 and r.signals == 1 and not r.finished_first]
    checks.check(
        "a single SIGINT / SIGTERM / SIGHUP leaves no row mid-submit whose job fal queued",
        not any(r.left_with_job for r in graceful),
        f"{sum(r.left_with_job for r in graceful)} such rows over {len(graceful)} runs;"
        f" rows left mid-submit without a job (false unknowns):"
        f" {sum(r.left_submitting - r.left_with_job for r in graceful)}",
    )
    checks.check(
        "the emulator had no internal error",
        not emu.internal_errors,
        "; ".join(repr(e) for e in emu.internal_errors[:3]),
    )

    # Money: each input is billed at most as often as the manifest holds it (identical lines
    # are distinct items), but where an unknown row was resubmitted: the documented gap.
    allowed = Counter(line.prompt for line in s.lines)
    prompt_of = {job.input_hash: str(job.input.get("prompt")) for job in emu.jobs.values()}
    billed = emu.counters.billed_by_input
    over = {h: n - allowed[prompt_of[h]] for h, n in billed.items() if n > allowed[prompt_of[h]]}
    gap = {h: n for h, n in over.items() if prompt_of[h] in gap_prompts}
    unexplained = {prompt_of[h]: n for h, n in over.items() if h not in gap}
    per_item = max((n - allowed[prompt_of[h]] + 1 for h, n in billed.items()), default=0)
    checks.check(
        "no input billed twice (beyond its identical lines), but for unknown rows resubmitted",
        not unexplained,
        f"max billed per input {max(billed.values(), default=0)}, max per item {per_item}"
        + (f"; unexplained: {dict(list(unexplained.items())[:5])}" if unexplained else ""),
    )
    final_new = sum(billed[h] - billed_before_final[h] for h in billed)
    print(
        f"  extra billed jobs: {emu.counters.billed - s.items} ({sum(gap.values())} from"
        f" unknown rows resubmitted, the documented gap; {len(gap_prompts)} unknown rows"
        f" resubmitted, {final_new} jobs billed in the final run)"
    )

    # Files.
    report = disk_report(s.out, entries)
    expected = sum(line.num_images for line in s.lines)
    checks.check(
        "every item downloaded: one valid image per requested output",
        len(report["on_disk"]) == expected and not report["invalid"] and not report["missing"],
        f"{len(report['on_disk'])} files for {expected} images"
        + (f"; invalid {report['invalid'][:3]}" if report["invalid"] else "")
        + (f"; missing {report['missing'][:3]}" if report["missing"] else ""),
    )
    checks.check(
        "no orphan: no temp file, no file the journal does not list",
        not report["parts"] and not report["unlisted"],
        f"temp {report['parts'][:3]}, unlisted {report['unlisted'][:3]}",
    )
    states = Counter(e.state.value for e in entries)
    shown = final.states
    checks.check(
        "`journal show --json` agrees with the disk: every row downloaded, files intact",
        dict(shown) == {"downloaded": s.items}
        and states == Counter({"downloaded": s.items})
        and not report["mismatched"]
        and not report["elsewhere"],
        f"journal show {dict(shown)}; mismatched {report['mismatched'][:3]}",
    )


def _figures(s: Scenario, unknown_at_end: set[str], elapsed: float) -> None:
    emu, counters = s.emu, s.emu.counters
    signals = sum(r.signals for r in s.runs)
    by_kind: Counter[str] = Counter()
    for r in s.runs:
        if r.interrupt is not None:
            by_kind[_name(r.interrupt.signum)] += r.signals
    jobs = list(emu.jobs.values())
    honoured = sum(j.cancelled and j.ran for j in jobs)
    dequeued = sum(j.cancelled and not j.ran for j in jobs)
    ran_on = sum(j.cancel_ignored and j.billed for j in jobs)
    seen_unknown = set().union(*(r.unknown_keys for r in s.runs))
    print("figures:")
    print(f"  runs: {len(s.runs)}; signals sent: {signals} ({dict(by_kind)})")
    print(f"  peak jobs running on the emulator: {counters.peak_in_flight} of {WORKERS} workers")
    print(
        f"  cancels: {counters.cancels} requests; fal accepted"
        f" {sum(r.accepted_cancels for r in s.runs)} (as the CLI reported);"
        f" jobs cancelled while queued {dequeued}, while running"
        f" {honoured}; ran on after a requested cancel and billed: {ran_on}"
    )
    print(
        f"  unknown rows: {len(seen_unknown)} seen over the runs, {len(unknown_at_end)} before"
        f" the final run (resubmitted by it)"
    )
    kills = sum(r.left_with_job for r in s.runs if r.phase == 2)
    twice = sum(r.left_with_job for r in s.runs if r.phase == 1 and r.signals > 1)
    false = sum(r.left_submitting - r.left_with_job for r in s.runs)
    print(
        f"  rows left mid-submit with a job queued on fal (a resubmit pays twice): {kills} by"
        f" SIGKILL, {twice} by a second SIGINT / SIGTERM / SIGHUP; plus"
        f" {counters.faults_injected['connection_reset']} submit answers lost to a reset"
    )
    print(
        f"  rows left mid-submit with no job on fal (unknown, though nothing was queued): {false}"
    )
    print(
        f"  submits {counters.submits} for {s.items} items ({counters.submits - s.items:+d});"
        f" billed {counters.billed}; downloads {counters.downloads}"
    )
    faults = ", ".join(f"{k}={v}" for k, v in sorted(counters.faults_injected.items()))
    print(f"  emulator faults: {faults}")
    print(f"  wall time: {elapsed:.1f} s")


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, help=f"items in the manifest (default {ITEMS})")
    parser.add_argument("--runs", type=int, help=f"runs in phases 1 and 2 each (default {RUNS})")
    parser.add_argument("--seed", type=int, default=SEED)
    quick = f"{QUICK_ITEMS} items, {QUICK_RUNS} + {QUICK_RUNS} runs"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--keep", type=Path, help="work in this folder (emptied) and keep it")
    args = parser.parse_args(argv)
    items = args.items or (QUICK_ITEMS if args.quick else ITEMS)
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    if args.keep is None:
        with tempfile.TemporaryDirectory(prefix="fal-cli-chaos-") as tmp:
            return anyio.run(main, items, runs, args.seed, Path(tmp))
    shutil.rmtree(args.keep, ignore_errors=True)
    args.keep.mkdir(parents=True)
    return anyio.run(main, items, runs, args.seed, args.keep)


if __name__ == "__main__":
    sys.exit(_cli())
