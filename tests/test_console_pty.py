"""fal-edit in a real pseudo-terminal: what the live panel and the summary say, frame by frame.

The CLI runs as its own process on the slave side of a pty (a 120x40 terminal, or a tiny one),
against an emulator on a thread of this process. The emulator's gates and hooks make the run
deterministic: jobs are held, some are cancelled through fal's API and some failed by the
model, the budget leaves the rest unsubmitted; the test waits for the panel to show each step
(reading the terminal, never sleeping) and checks the counts against what the emulator did.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal

from fal_edit_async import AsyncClient, CancelOutcome, estimate_cost, input_from_dict
from fal_edit_async.emulator import Emulator

from .conftest import FAST_POLLING, FAST_RETRY
from .test_cli_support import emulator_thread, plain, write_images

PROMPT = "Make this pixel-art style."
#: Backstop for one wait on the terminal; every wait ends on what the terminal shows.
WAIT = 60
_PANEL = re.compile(
    r"(\d+) done(?: \(\d+ from the journal\))? · (\d+) failed((?: · [^\n]*?)?) · (\d+) in flight"
)


class Terminal:
    """The master side of a pty: everything the CLI drew, and waits on it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = b""
        self.changed = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            with self.changed:
                if not chunk:
                    self.closed = True
                    self.changed.notify_all()
                    return
                self.raw += chunk
                self.changed.notify_all()

    @property
    def text(self) -> str:
        return plain(self.raw.decode("utf-8", "replace"))

    def wait_for(self, pattern: str) -> re.Match[str]:
        """Block until the screen output matches ``pattern`` (a regex)."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: re.search(pattern, self.text) or self.closed, timeout=WAIT
            )
        found = re.search(pattern, self.text)
        assert ok and found, f"never shown: {pattern!r}\n--- screen ---\n{self.text[-3000:]}"
        return found

    def wait_closed(self) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.closed, timeout=WAIT), self.text[-3000:]


@contextmanager
def fal_edit(
    argv: list[str], emu: Emulator, cwd: Path, *, size: tuple[int, int] = (120, 40)
) -> Iterator[tuple[subprocess.Popen[bytes], Terminal]]:
    """``fal-edit ARGV`` on a pty of ``size`` (columns, rows), pointed at ``emu``."""
    master, slave = pty.openpty()
    columns, rows = size
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env |= {"FAL_KEY": emu.api_key, "FAL_QUEUE_URL": emu.queue_url, "FAL_REST_URL": emu.rest_url}
    env |= {"TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
    for name in ("COLUMNS", "LINES", "NO_COLOR", "CI"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "fal_edit_async", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    terminal = Terminal(master)
    try:
        yield process, terminal
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT)
        terminal.reader.join(timeout=WAIT)
        os.close(master)


def _cancel(portal: BlockingPortal, emu: Emulator, ids: list[str]) -> list[CancelOutcome]:
    """Cancel jobs through fal's API, as someone else (or the fal dashboard) would."""

    async def cancel() -> list[CancelOutcome]:
        async with AsyncClient(
            api_key=emu.api_key,
            queue_url=emu.queue_url,
            rest_url=emu.rest_url,
            retry=FAST_RETRY,
            polling=FAST_POLLING,
        ) as client:
            return [await client.cancel(rid) for rid in ids]

    return portal.call(cancel)


def _panels(text: str) -> list[tuple[int, int, str, int]]:
    """Every frame of the panel's counts line: (done, failed, the rest, in flight)."""
    return [(int(d), int(f), rest, int(n)) for d, f, rest, n in _PANEL.findall(text)]


def test_a_200_item_run_counts_each_outcome_truthfully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 items in a 120x40 terminal: 5 jobs cancelled on fal, 7 refused by the model, 50
    beyond the budget. The panel shows the cancels and failures apart while jobs are in
    flight, never counts a cancel or an unsent item as failed, and its last frame and the
    summary match what the emulator did."""
    names = [f"photo-{n:03}.png" for n in range(200)]
    write_images(tmp_path / "in", *names)
    options = {"quality": "low", "image_size": "1024x1024"}
    one = estimate_cost(
        input_from_dict({"prompt": PROMPT, "image_urls": [tmp_path / "in" / names[0]], **options})
    ).usd
    budget = one * 150
    argv = ["edit", PROMPT, "in", "--out", "out", "--quality", "low"]
    argv += ["--image-size", "1024x1024", "--budget", str(budget), "--concurrency", "16"]
    with emulator_thread(monkeypatch, workers=4) as (portal, emu):
        portal.call(emu.hold_jobs)
        with fal_edit(argv, emu, tmp_path) as (process, screen):
            portal.call(emu.wait_submitted, 16)
            screen.wait_for(r"· 16 in flight")
            ids = list(emu.jobs)
            queued = [rid for rid in ids if emu.jobs[rid].state.value == "IN_QUEUE"]
            assert {CancelOutcome.REQUESTED} == set(_cancel(portal, emu, queued[:5]))
            for rid in queued[5:12]:
                emu.fail_job(rid, "validation")
            screen.wait_for(r"0 done · 7 failed · 5 cancelled · \d+ in flight")
            portal.call(emu.release_jobs)
            screen.wait_for(r"\d+ done, 7 failed .* of 200")
            screen.wait_closed()
        assert 1 == process.wait(timeout=WAIT)
        submitted = emu.counters.submits
    text = screen.text
    assert 150 == submitted  # the budget: not one item more
    frames = _panels(text)
    assert frames, text[-3000:]
    assert all(failed <= 7 for _, failed, _, _ in frames)  # cancels and unsent never "failed"
    done, failed, rest, flying = frames[-1]
    assert (138, 7, 0) == (done, failed, flying)
    assert " · 5 cancelled · 50 not submitted" == rest
    [summary] = [line for line in text.splitlines() if line.endswith(" s") and " of 200 · " in line]
    assert summary.startswith("138 done, 7 failed (7 ")
    assert ", 5 cancelled, 50 not submitted (50 over budget) of 200 · " in summary
    assert f"~${one * 138:.2f} spent by this run (estimated)" in summary
    assert "Not done:" in text and "50 items not submitted (over budget): raise --budget" in text
    assert 7 == text.count("→ fal refused it: change the prompt or the image")
    # 50 items over budget: one line as it happens, one line at the end, not 50 of each
    assert 1 == len(re.findall(r"✗ photo-\d+ not submitted", text))
    assert 138 == len(list((tmp_path / "out").glob("*.png")))


def test_ctrl_c_in_a_tiny_terminal_says_what_it_cancelled_and_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a 40x10 terminal: the panel stops its ETA, jobs whose cancel fal took (but
    may still run) are interrupted, not failed, with the way to fetch each, and a run without
    --journal says how to make it resumable."""
    write_images(tmp_path / "in", *(f"p{n}.png" for n in range(6)))
    with emulator_thread(monkeypatch, workers=2) as (portal, emu):
        portal.call(emu.hold_queue)
        with fal_edit(["edit", PROMPT, "in", "--out", "out"], emu, tmp_path, size=(40, 10)) as (
            process,
            screen,
        ):
            portal.call(emu.wait_submitted, 6)
            screen.wait_for(r"6 in flight")
            os.killpg(process.pid, signal.SIGINT)
            screen.wait_for(r"No --journal")
            screen.wait_closed()
        assert 130 == process.wait(timeout=WAIT)
    text = screen.text
    assert "Ctrl-C: cancelling 6 jobs on fal" in text
    assert re.search(
        r"0 done, 6 interrupted of 6 · ~\$0\.00 spent by this run, ~\$\S+ for jobs left", text
    )
    assert 6 == len(
        re.findall(
            r"interrupted: fal took the cancel, but it may still run → "
            r"`fal-edit result \S+ --out DIR` fetches it",
            text,
        )
    )
    assert "ETA" not in text.rpartition("stopping")[2]
    assert "Traceback" not in text
