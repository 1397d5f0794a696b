"""The plain ways to show a run: JSON lines for pipelines, text lines for a terminal without
rich. The rich live display (``_display``) is a third reporter with the same methods.

Reporters only render: :class:`~._progress.Progress` holds the numbers, and the run updates it
before it tells a reporter anything, so every view agrees.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import sys
import traceback
from collections.abc import Iterator
from typing import Any, Protocol, TextIO

import attrs

from .. import BatchEvent, FalEditError, ItemLog, ItemReattached, ItemResult, ItemSubmitted
from ._messages import cause, message
from ._progress import ActiveJob, Finished, Progress, duration

__all__ = [
    "ActiveJob",
    "JsonReporter",
    "LinesReporter",
    "OutputClosed",
    "Progress",
    "Reporter",
    "Verbosity",
    "describe",
    "detach_terminal",
    "duration",
    "reason",
    "record",
    "tolerating_hangup",
]

#: Runs of up to this many items print every model log line by default (more would bury the
#: results); --verbose prints them always, --quiet never.
LOG_LINES_UP_TO = 8

reason = cause
#: Control characters (but tab) in a name or a log line: shown escaped, never sent to the
#: terminal, where a file called "\x1b[2J.png" would clear the screen. Lone surrogates (the
#: bytes of a file name that is not UTF-8) too: no terminal encoding can write them.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x1b``, ``\\udce9``),
    safe to print on a terminal."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


class OutputClosed(Exception):
    """stdout was closed under us (``| head -1``): the run stops as if interrupted."""


def detach_terminal() -> None:
    """The terminal hung up: writes to it would fail (EIO), so stdout and stderr that were
    on it go to /dev/null from now on. One redirected to a file or a pipe keeps its lines."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = stream.fileno()
            # Not isatty(): a terminal that hung up fails its tcgetattr (EIO). A character
            # device there is a terminal, or /dev/null already.
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)


@contextlib.contextmanager
def tolerating_hangup() -> Iterator[None]:
    """A write to a terminal that hung up (EIO, before SIGHUP reached the run) is dropped,
    and the terminal detached, rather than ending the run with an error: the SIGHUP that
    follows stops it properly, cancelling its jobs on fal."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        detach_terminal()


@attrs.frozen
class Verbosity:
    """What scrolls by: model log lines, a line per finished item, retries."""

    quiet: bool = False
    verbose: bool = False

    def logs(self, total: int) -> bool:
        """Print model log lines for a run of ``total`` items."""
        return not self.quiet and (self.verbose or total <= LOG_LINES_UP_TO)


def outputs(result: ItemResult) -> list[str]:
    """Where the item's images are: file paths when downloaded, else their URLs."""
    if result.files:
        return [str(f.path) for f in result.files]
    return [image.url for image in result.output.images] if result.output else []


def sources(result: ItemResult) -> list[str]:
    """Which files or URLs the item edited (data URIs and bytes shortened), so a JSON line
    says which input became which output."""
    named = []
    for source in result.input.image_urls if result.input is not None else ():
        if isinstance(source, bytes | bytearray | memoryview):
            named.append(f"<{len(source)} bytes>")
        elif isinstance(source, str) and source.startswith("data:"):
            named.append(source[: source.find(",") + 1] + "...")
        else:
            named.append(str(source))
    return named


def record(finished: Finished, *, emulator: bool = False) -> dict[str, Any]:
    """The JSON object printed for a finished item.

    ``status`` is the library's state; ``outcome`` the panel's word for it (``skipped`` for a
    failure an earlier run recorded); ``error_type`` is fal's error type when it gave one.
    """
    result = finished.result
    data: dict[str, Any] = {
        "input": result.key,
        "sources": sources(result),
        "request_id": result.request_id,
        "status": result.state.value,
        "outcome": finished.outcome,
        "outputs": outputs(result),
        "error": message(result.error) if result.error else None,
        "error_type": cause(result.error) if result.error else None,
        "cost": float(result.cost),
    }
    if finished.line is not None:
        data["line"] = finished.line
    if finished.seconds is not None:
        data["seconds"] = round(finished.seconds, 2)
    if result.resumed:
        data["resumed"] = True
    if emulator:
        data["emulator"] = True
    return data


def describe(finished: Finished) -> str:
    """One human line for a finished item: where its images went, or why it did not."""
    result = finished.result
    if result.ok:
        where = ", ".join(outputs(result)) or "(no images)"
        return printable(f"✓ {result.key} → {where}")
    why = message(result.error) if result.error else "no reason given"
    text = printable(f"✗ {result.key} {finished.outcome}: {why}")
    if finished.outcome == "not submitted":
        text += " (more like it are counted at the end)"
    return text


def log_line(event: ItemLog) -> str:
    """A model log line, labelled with the input it belongs to."""
    return printable(f"[{event.key}] {event.entry.message}")


def retry_line(event: BatchEvent) -> str | None:
    """A line for a job submitted again after a transient failure, or re-attached."""
    if isinstance(event, ItemSubmitted) and event.attempt > 1:
        text = f"[{event.key}] job submitted again (attempt {event.attempt}): {event.request_id}"
        return printable(text)
    if isinstance(event, ItemReattached):
        return printable(
            f"[{event.key}] re-attached to the job of an earlier run: {event.request_id}"
        )
    return None


class Reporter(Protocol):
    """What a run tells its user, however it is shown. The run updates ``progress`` first."""

    progress: Progress

    def start(self) -> None:
        """Begin showing progress (after the first notices)."""

    def notice(self, text: str) -> None:
        """A diagnostic line (the emulator banner, an interruption, a warning)."""

    def event(self, event: BatchEvent) -> None:
        """A progress event of the batch."""

    def result(self, finished: Finished) -> None:
        """A finished item (raises :class:`OutputClosed` when stdout went away)."""

    def close(self, lines: list[str]) -> None:
        """The run ended: stop any display and show the summary lines."""

    async def animate(self) -> None:
        """Keep a live display fresh until cancelled (returns at once for plain output)."""


def _traceback(error: FalEditError | None) -> str:
    if error is None:
        return ""
    return "".join(traceback.format_exception(error)).rstrip()


def _print(text: str, stream: TextIO) -> None:
    with tolerating_hangup():
        print(text, file=stream, flush=True)


@attrs.define
class JsonReporter:
    """One JSON object per finished item on ``out``; logs and diagnostics on ``err``, or on
    a live display there (``display``) when stderr is a terminal."""

    progress: Progress
    out: TextIO
    err: TextIO
    emulator: bool = False
    debug: bool = False
    verbosity: Verbosity = attrs.field(factory=Verbosity)
    display: Reporter | None = None
    closed: bool = False

    def start(self) -> None:
        if self.display is not None:
            self.display.start()

    def notice(self, text: str) -> None:
        if self.display is not None:
            self.display.notice(text)
        else:
            _print(text, self.err)

    def event(self, event: BatchEvent) -> None:
        if self.display is not None:
            self.display.event(event)
            return
        if isinstance(event, ItemLog) and self.verbosity.logs(self.progress.total):
            _print(log_line(event), self.err)
        elif (line := retry_line(event)) is not None and not self.verbosity.quiet:
            _print(line, self.err)

    def result(self, finished: Finished) -> None:
        if self.display is not None:
            self.display.result(finished)
        elif self.debug and finished.result.error is not None:
            _print(_traceback(finished.result.error), self.err)
        if self.closed:
            return
        data = record(finished, emulator=self.emulator)
        try:
            try:
                _print(json.dumps(data, ensure_ascii=False), self.out)
            except UnicodeEncodeError:  # a ValueError too, but stdout is open: an ASCII locale,
                # or a file name that is not UTF-8. The same JSON, with its escapes, fits any.
                _print(json.dumps(data), self.out)
        except (BrokenPipeError, ValueError) as exc:  # ValueError: write to a closed file
            self.closed = True
            raise OutputClosed from exc

    def close(self, lines: list[str]) -> None:
        if self.display is not None:
            self.display.close(lines)
            return
        for line in lines:
            _print(line, self.err)

    async def animate(self) -> None:
        if self.display is not None:
            await self.display.animate()


@attrs.define
class LinesReporter:
    """Human lines on a terminal when rich is not installed: logs, results, the summary."""

    progress: Progress
    out: TextIO
    debug: bool = False
    verbosity: Verbosity = attrs.field(factory=Verbosity)

    def start(self) -> None:
        return

    def notice(self, text: str) -> None:
        _print(text, self.out)

    def event(self, event: BatchEvent) -> None:
        if isinstance(event, ItemLog) and self.verbosity.logs(self.progress.total):
            _print(log_line(event), self.out)
        elif (line := retry_line(event)) is not None and not self.verbosity.quiet:
            _print(line, self.out)

    def result(self, finished: Finished) -> None:
        p = self.progress
        if (self.verbosity.quiet and finished.result.ok) or finished.repeat:
            return
        _print(f"{describe(finished)}  [{p.finished}/{p.total}]", self.out)
        if self.debug and finished.result.error is not None:
            _print(_traceback(finished.result.error), self.out)

    def close(self, lines: list[str]) -> None:
        for line in lines:
            _print(line, self.out)

    async def animate(self) -> None:
        return
