"""ProgressBar: an ``on_event`` callback that draws a batch's progress with tqdm or rich.

Neither is a dependency: the bar imports whichever is installed when it is made (tqdm's
``tqdm.auto`` draws a widget in a notebook), and falls back to plain text lines.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Any, Literal, Protocol, Self, TypeAlias

from ._batch._events import (
    BatchEvent,
    ItemCompleted,
    ItemFailed,
    ItemInterrupted,
    ItemSubmitted,
)

__all__ = ["ProgressBar"]

BarKind: TypeAlias = Literal["auto", "tqdm", "rich", "text"]


class _Display(Protocol):
    def show(self, done: int, text: str) -> None: ...

    def close(self) -> None: ...


class _Tqdm:
    def __init__(self, total: int | None, description: str, file: IO[str] | None) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=description, unit="item", file=file)
        self._done = 0

    def show(self, done: int, text: str) -> None:
        self._bar.update(done - self._done)
        self._done = done
        self._bar.set_postfix_str(text)

    def close(self) -> None:
        self._bar.close()


class _Rich:
    def __init__(self, total: int | None, description: str, file: IO[str] | None) -> None:
        from rich.console import Console
        from rich.progress import Progress, ProgressColumn

        console = Console(file=file) if file is not None else None
        columns: tuple[str | ProgressColumn, ...] = (
            *Progress.get_default_columns(),
            "{task.fields[text]}",
        )
        self._progress = Progress(*columns, console=console)
        self._task = self._progress.add_task(description, total=total, text="")
        self._progress.start()

    def show(self, done: int, text: str) -> None:
        self._progress.update(self._task, completed=done, text=text)

    def close(self) -> None:
        self._progress.stop()


class _Text:
    def __init__(self, total: int | None, description: str, file: IO[str] | None) -> None:
        self._total = total
        self._description = description
        self._file = file

    def show(self, done: int, text: str) -> None:
        of = f"/{self._total}" if self._total is not None else ""
        print(f"{self._description}: {done}{of} {text}", file=self._file or sys.stderr)

    def close(self) -> None:
        pass


_DISPLAYS: dict[str, type[_Tqdm | _Rich | _Text]] = {"tqdm": _Tqdm, "rich": _Rich, "text": _Text}


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


class ProgressBar:
    """An ``on_event`` callback for ``edit_many`` that draws the batch's progress.

    It counts an item done when its job completed, failed or was interrupted, and shows how
    many succeeded, failed and are running. ``kind="auto"`` uses tqdm if installed (a widget
    in a notebook), else rich, else plain text lines on stderr; naming one that is not
    installed raises ``ImportError``. The bar closes when ``total`` items are done, or with
    :meth:`close` (or at the end of a ``with`` block).

    Usage::

        with ProgressBar(total=len(inputs)) as bar:
            for result in fal.edit_many(inputs, on_event=bar):
                ...

    Args:
        total: how many items the batch has, if known.
        kind: ``"auto"``, ``"tqdm"``, ``"rich"`` or ``"text"``.
        description: the bar's label.
        file: where to draw (default: the library's own default, stderr).
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        kind: BarKind = "auto",
        description: str = "fal edits",
        file: IO[str] | None = None,
    ) -> None:
        if kind == "auto":
            kind = next((k for k in ("tqdm", "rich") if _installed(k)), "text")
        if kind not in _DISPLAYS:
            raise ValueError(f"kind must be one of auto, tqdm, rich, text; got {kind!r}")
        self.kind: str = kind
        self.total = total
        self._display: _Display = _DISPLAYS[kind](total, description, file)
        self._states: dict[str, str] = {}
        self._running: set[str] = set()
        self._closed = False

    def __call__(self, event: BatchEvent) -> None:
        """Take one batch event (this is what ``on_event`` calls)."""
        if isinstance(event, ItemSubmitted):
            self._running.add(event.key)
            return
        state = _STATES.get(type(event))
        if state is None or self._closed:
            return
        self._running.discard(event.key)
        self._states[event.key] = state
        self._display.show(self.done, self._text())
        if self.total is not None and self.done >= self.total:
            self.close()

    @property
    def done(self) -> int:
        """Items finished so far, however they ended."""
        return len(self._states)

    def count(self, state: Literal["ok", "failed", "interrupted"]) -> int:
        """Items that ended in ``state`` so far."""
        return sum(1 for s in self._states.values() if s == state)

    def _text(self) -> str:
        parts = [f"ok={self.count('ok')}", f"failed={self.count('failed')}"]
        if interrupted := self.count("interrupted"):
            parts.append(f"interrupted={interrupted}")
        parts.append(f"running={len(self._running)}")
        return " ".join(parts)

    def close(self) -> None:
        """Finish drawing; later events are ignored. A second call does nothing."""
        if not self._closed:
            self._closed = True
            self._display.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_STATES: dict[type[Any], str] = {
    ItemCompleted: "ok",
    ItemFailed: "failed",
    ItemInterrupted: "interrupted",
}
