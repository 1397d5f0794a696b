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

from .. import BatchEvent, ItemLog, ItemResult
from ._report import ActiveJob, Progress, describe, duration

__all__ = ["LiveDisplay"]

#: Active jobs shown one per line; the rest are counted on one more line.
MAX_ROWS = 8
#: Redraws per second while running (the ETA and running times tick between events).
FPS = 4
BAR_WIDTH = 40
_ORDER = {"downloading": 0, "running": 1, "submitted": 2, "queued": 3}


@attrs.define
class LiveDisplay:
    """Progress and active jobs at the bottom of the terminal; logs and results scroll above."""

    progress: Progress
    console: Console
    debug: bool = False
    _live: Live | None = None

    def start(self) -> None:
        """Show the display (diagnostics printed before it stay above it)."""
        self._live = Live(
            console=self.console,
            get_renderable=self.render,
            auto_refresh=False,
            transient=False,
        )
        self._live.start(refresh=True)

    def notice(self, text: str) -> None:
        self.console.print(Text(text, style="bold yellow"))

    def event(self, event: BatchEvent) -> None:
        self.progress.on_event(event)
        if isinstance(event, ItemLog):
            self.console.print(Text.assemble((f"[{event.key}] ", "cyan"), event.entry.message))

    def result(self, result: ItemResult, line: int | None = None) -> None:
        self.progress.on_result(result)
        self.console.print(Text(describe(result), style="green" if result.ok else "red"))
        if self.debug and result.error is not None:
            text = "".join(traceback.format_exception(result.error)).rstrip()
            self.console.print(Text(text, style="dim"))

    def close(self, summary: str) -> None:
        self.stop()
        self.console.print(Text(summary, style="bold"))

    def stop(self) -> None:
        """Draw the final state and give the terminal back (the cursor too)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    async def animate(self) -> None:
        while True:
            if self._live is not None:
                self._live.refresh()
            await anyio.sleep(1 / FPS)

    def render(self) -> RenderableType:
        """The bottom of the screen: two overall lines (fit for 80 columns), then active jobs."""
        p = self.progress
        bar = ProgressBar(total=max(p.total, 1), completed=p.finished, width=BAR_WIDTH)
        top = Table.grid(padding=(0, 1))
        top.add_row(bar, _timing(p))
        return Group(top, _counts(p), _jobs(p))


def _timing(p: Progress) -> Text:
    eta = p.eta()
    return Text.assemble(
        (f"{p.finished}/{p.total}", "bold"),
        f" · {duration(p.elapsed())}",
        (f" · ETA {duration(eta)}" if eta is not None else "", ""),
    )


def _counts(p: Progress) -> Text:
    queued = sum(1 for job in p.active.values() if job.state == "queued")
    return Text.assemble(
        (f"{p.done} done", "green"),
        " · ",
        (f"{p.failed} failed", "red" if p.failed else ""),
        " · ",
        (f"{len(p.active)} in flight", "cyan"),
        (f" ({queued} queued)" if queued else "", "yellow"),
        f" · ~${p.cost_so_far():.2f} so far",
    )


def _jobs(p: Progress) -> Table:
    table = Table.grid(padding=(0, 2))
    jobs = sorted(p.active.values(), key=lambda j: (_ORDER.get(j.state, 9), j.position or 0))
    for job in jobs[:MAX_ROWS]:
        table.add_row(Text(f"  {job.key}", overflow="ellipsis"), _state(job, p), job.request_id)
    if len(jobs) > MAX_ROWS:
        table.add_row(Text(f"  … and {len(jobs) - MAX_ROWS} more", style="dim"), "", "")
    return table


def _state(job: ActiveJob, p: Progress) -> Text:
    if job.state == "queued":
        return Text(f"queued #{(job.position or 0) + 1}", style="yellow")
    since = duration(p.clock() - job.since)
    return Text(f"{job.state} {since}", style="cyan" if job.state == "running" else "")
