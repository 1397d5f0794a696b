"""The live terminal display, drawn with rich (the ``cli`` extra; imported only on a terminal).

The bottom of the screen holds the overall progress and a line per active job; log lines and
finished items scroll above it as they arrive. The display is redrawn by :meth:`animate` on
the event loop, never from a thread, so it reads the progress while nothing changes it.
"""

from __future__ import annotations

import traceback

import anyio
import attrs
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import BatchEvent, ItemLog
from ._progress import ActiveJob, Finished, Progress, duration
from ._report import Verbosity, describe, printable, retry_line, tolerating_hangup

__all__ = ["LiveDisplay"]

#: Active jobs shown one per line; the rest are counted on one more line.
MAX_ROWS = 8
#: Redraws per second while running (the ETA and running times tick between events).
FPS = 4
BAR_WIDTH = 40
_ORDER = {"downloading": 0, "running": 1, "re-attached": 2, "submitted": 3, "queued": 4}


@attrs.define
class LiveDisplay:
    """Progress and active jobs at the bottom of the terminal; logs and results scroll above.

    With ``--quiet`` nothing scrolls but failures, and the panel is not drawn.
    """

    progress: Progress
    console: Console
    debug: bool = False
    verbosity: Verbosity = attrs.field(factory=Verbosity)
    emulator: bool = False
    _live: Live | None = None

    def start(self) -> None:
        """Show the display (diagnostics printed before it stay above it)."""
        if self.verbosity.quiet:
            return
        self._live = Live(
            console=self.console,
            get_renderable=self.render,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        with tolerating_hangup():
            self._live.start(refresh=True)

    def notice(self, text: str) -> None:
        self._print(Text(text, style="bold yellow"))

    def event(self, event: BatchEvent) -> None:
        if isinstance(event, ItemLog):
            if self.verbosity.logs(self.progress.total):
                key, said = printable(event.key), printable(event.entry.message)
                self._print(Text.assemble((f"[{key}] ", "cyan"), said))
        elif (line := retry_line(event)) is not None and not self.verbosity.quiet:
            self._print(Text(line, style="yellow"))

    def result(self, finished: Finished) -> None:
        ok = finished.result.ok
        if (ok and self.verbosity.quiet) or finished.repeat:
            return
        self._print(Text(describe(finished), style="green" if ok else "red"))
        if self.debug and finished.result.error is not None:
            text = "".join(traceback.format_exception(finished.result.error)).rstrip()
            self._print(Text(text, style="dim"))

    def close(self, lines: list[str]) -> None:
        self.stop()
        for n, line in enumerate(lines):  # soft wrap: long lines stay whole when copied
            self._print(Text(line, style="bold" if n == 0 else ""), soft_wrap=True)

    def stop(self) -> None:
        """Draw the final state and give the terminal back (the cursor too)."""
        if self._live is not None:
            live, self._live = self._live, None
            with tolerating_hangup():
                live.stop()

    def _refresh(self) -> None:
        if self._live is not None:
            with tolerating_hangup():
                self._live.refresh()

    def _print(self, text: Text, *, soft_wrap: bool = False) -> None:
        with tolerating_hangup():
            self.console.print(text, soft_wrap=soft_wrap)

    async def animate(self) -> None:
        while True:
            self._refresh()
            await anyio.sleep(1 / FPS)

    def render(self) -> RenderableType:
        """The bottom of the screen: three overall lines (fit for 80 columns), then jobs."""
        p = self.progress
        bar = ProgressBar(total=max(p.total, 1), completed=p.finished, width=BAR_WIDTH)
        top = Table.grid(padding=(0, 1))
        top.add_row(bar, _timing(p))
        return Group(top, _counts(p), _cost(p, self.emulator), _jobs(p))


def _timing(p: Progress) -> Text:
    eta = p.eta()
    tail = f" · {p.stopping}" if p.stopping else (f" · ETA {duration(eta)}" if eta else "")
    return Text.assemble((f"{p.finished}/{p.total}", "bold"), f" · {duration(p.elapsed())}", tail)


_STYLES = {"done": "green", "failed": "red", "unknown": "red", "interrupted": "yellow"}


def _counts(p: Progress) -> Text:
    queued = sum(1 for job in p.active.values() if job.state == "queued")
    parts: list[tuple[str, str]] = [(f"{p.done} done", "green")]
    if p.resumed:
        parts[0] = (f"{p.done} done ({p.resumed} from the journal)", "green")
    for state in ("failed", "cancelled", "not submitted", "skipped", "unknown", "interrupted"):
        if p.counts[state] or state == "failed":
            parts.append((f"{p.counts[state]} {state}", _STYLES.get(state, "yellow")))
    flight = f"{len(p.active)} in flight" + (f" ({queued} queued)" if queued else "")
    parts.append((flight, "cyan"))
    text = Text()
    for n, (words, style) in enumerate(parts):
        if n:
            text.append(" · ")
        text.append(words, style if words[0] != "0" else "")
    return text


def _cost(p: Progress, emulator: bool) -> Text:
    text = Text(p.cost_text(emulator=emulator), style="dim" if emulator else "")
    if p.lowest is not None:
        text.append(f" · rate limited: in flight lowered to {p.lowest}", style="yellow")
    return text


def _jobs(p: Progress) -> Table:
    table = Table.grid(padding=(0, 2))
    jobs = sorted(p.active.values(), key=lambda j: (_ORDER.get(j.state, 9), j.position or 0))
    for job in jobs[:MAX_ROWS]:
        name = Text(f"  {printable(job.key)}", overflow="ellipsis", no_wrap=True)
        log = Text(printable(job.last_log or ""), style="dim", overflow="ellipsis", no_wrap=True)
        # fal's request id is any header-safe string: a Text, so rich never reads it as markup.
        table.add_row(name, _state(job, p), Text(printable(job.request_id)), log)
    if len(jobs) > MAX_ROWS:
        more = Text(f"  … and {len(jobs) - MAX_ROWS} more", style="dim")
        table.add_row(more, Text(), Text(), Text())
    return table


def _state(job: ActiveJob, p: Progress) -> Text:
    if p.stopping and job.state in ("queued", "submitted", "re-attached"):
        return Text("cancelling", style="yellow")  # a queue position heard before is stale now
    if job.state == "queued":
        return Text(f"queued #{(job.position or 0) + 1}", style="yellow")
    since = duration(p.clock() - job.since)
    return Text(f"{job.state} {since}", style="cyan" if job.state == "running" else "")
