"""The terminal of a run closes (SIGHUP): the run stops as after Ctrl-C, not as after kill -9.

The CLI runs on a real pseudo-terminal as its controlling terminal, so closing the master end
is a real hangup: the kernel sends SIGHUP, and writes to the terminal fail with EIO from then
on. Under ``nohup`` (SIGHUP ignored) a hangup changes nothing and the batch finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from fal_edit_async.emulator import Emulator

from .test_cli_support import write_images
from .test_hostile_ledger import fal_env

pytestmark = pytest.mark.skipif(
    not hasattr(os, "login_tty"), reason="needs a POSIX pseudo-terminal"
)

#: Started on the terminal's slave end, made its controlling terminal (``login_tty``), with
#: stdout sent to a file so the JSON lines can be read; SIGHUP ignored when asked (nohup).
_ON_TERMINAL = """
import os, signal, sys
slave, out, ignore = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
os.login_tty(os.open(slave, os.O_RDWR))
os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
if ignore:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
os.execv(sys.executable, [sys.executable, "-m", "fal_edit_async", *sys.argv[4:]])
"""


def _start(
    emulator: Emulator, tmp_path: Path, *, nohup: bool
) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = os.openpty()
    slave_name = os.ttyname(slave)
    os.close(slave)
    write_images(tmp_path / "in", "a.png", "b.png")
    env = fal_env(emulator) | {"TERM": "xterm", "COLUMNS": "100"}
    command = [sys.executable, "-c", _ON_TERMINAL, slave_name, str(tmp_path / "results.jsonl")]
    command += ["1" if nohup else "0", "edit", "p", str(tmp_path / "in")]
    command += ["--out", str(tmp_path / "out"), "--journal", str(tmp_path / "j")]
    return subprocess.Popen(command, env=env), master


def _drain(master: int) -> bytes:
    """What the run drew on its terminal and nobody read yet."""
    os.set_blocking(master, False)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except (BlockingIOError, OSError):
            return seen
        if not chunk:
            return seen
        seen += chunk


async def _in_flight(emulator: Emulator, master: int) -> bytes:
    """Both jobs running on the emulator and their status streams open; what the run drew
    on its terminal meanwhile (read as it comes, so the run never blocks on a full one)."""
    drawn = bytearray()

    async def drain() -> None:
        while True:
            await anyio.wait_readable(master)
            drawn.extend(_drain(master))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await emulator.wait_until(
                lambda: emulator.counters.in_flight >= 2 and emulator.counters.streams_opened >= 2
            )
            tg.cancel_scope.cancel()
    return bytes(drawn) + _drain(master)


def _results(tmp_path: Path) -> list[dict[str, object]]:
    text = (tmp_path / "results.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


async def test_a_hangup_cancels_the_jobs_on_fal_and_exits_129(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Closing the terminal: both jobs cancelled on fal (not left to run and bill), a JSON line
    per item still reaches the redirected stdout, nothing half-written, status 129."""
    emulator.hold_jobs()
    process, master = _start(emulator, tmp_path, nohup=False)
    try:
        drawn = await _in_flight(emulator, master)
        os.close(master)  # the terminal goes away: the kernel sends SIGHUP
        status = await anyio.to_thread.run_sync(process.wait)
    finally:
        if process.poll() is None:
            process.kill()

    assert drawn  # the live display was on the terminal
    assert 129 == status
    assert 2 == emulator.counters.cancels
    assert 2 == emulator.counters.submits
    results = _results(tmp_path)
    assert 2 == len(results)
    assert ["interrupted", "interrupted"] == [r["status"] for r in results], results
    assert [] == list((tmp_path / "out").glob(".*.part"))


@asynccontextmanager
async def _hung_up_with_cancels_held(
    emulator: Emulator, tmp_path: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A run with two jobs in flight whose terminal closed (the first SIGHUP), both cancels
    sent and their answers held: the process, for a second signal."""
    emulator.hold_jobs()
    emulator.schedule_fault("cancel", "slow_response", times=2, delay=60)
    process, master = _start(emulator, tmp_path, nohup=False)
    try:
        await _in_flight(emulator, master)
        os.close(master)  # the first SIGHUP
        await emulator.wait_slow_held(2)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        emulator.release_slow()


async def test_a_second_hangup_is_no_hurry(emulator: Emulator, tmp_path: Path) -> None:
    """A window closed under an interactive shell hangs the run up twice (the shell forwards its
    SIGHUP, the kernel sends another): the second must not quit at once while the cancels are
    on their way, or the jobs would run on and bill."""
    async with _hung_up_with_cancels_held(emulator, tmp_path) as process:
        process.send_signal(signal.SIGHUP)  # the second
        emulator.release_slow()
        status = await anyio.to_thread.run_sync(process.wait)

    assert 129 == status
    assert 2 == emulator.counters.cancels
    assert ["interrupted", "interrupted"] == [r["status"] for r in _results(tmp_path)]


async def test_sigterm_after_a_hangup_still_exits_at_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A second signal that is not a hangup (``kill`` from another shell) quits at once, as
    after Ctrl-C, though the terminal it would write its last words to is gone (writes to it
    fail with EIO, and it no longer even says it is a terminal)."""
    async with _hung_up_with_cancels_held(emulator, tmp_path) as process:
        process.send_signal(signal.SIGTERM)
        status = await anyio.to_thread.run_sync(process.wait)  # the cancels still held

    assert 129 == status  # the signal that stopped the run: the hangup
    assert [] == _results(tmp_path)  # gone at once, as promised: nothing more printed


async def test_under_nohup_a_hangup_changes_nothing(emulator: Emulator, tmp_path: Path) -> None:
    """SIGHUP ignored (``nohup``): the run outlives its terminal and finishes the batch."""
    emulator.hold_jobs()
    process, master = _start(emulator, tmp_path, nohup=True)
    try:
        await _in_flight(emulator, master)
        os.close(master)
        process.send_signal(signal.SIGHUP)  # and one sent by hand, as `kill -HUP` would
        emulator.release_jobs()
        status = await anyio.to_thread.run_sync(process.wait)
    finally:
        if process.poll() is None:
            process.kill()

    assert 0 == status
    assert 0 == emulator.counters.cancels
    assert 2 == emulator.counters.submits
    assert ["completed", "completed"] == [r["status"] for r in _results(tmp_path)]
    assert 2 == len(list((tmp_path / "out").glob("*.png")))
