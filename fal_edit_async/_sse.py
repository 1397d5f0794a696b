"""A server-sent events decoder: bytes in, events out, no I/O.

Follows the WHATWG event-stream rules that matter for fal's status stream: LF, CRLF and CR
line endings; ``:`` comments (keep-alives) ignored; ``data:`` lines of one event joined with
newlines; ``event:``, ``id:`` and ``retry:`` kept; unknown fields ignored; an event ends at
a blank line. Chunks may split lines (or a CRLF pair, or a UTF-8 character) anywhere.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import attrs

__all__ = ["SSEDecoder", "ServerSentEvent"]


@attrs.frozen(kw_only=True)
class ServerSentEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


@attrs.define
class SSEDecoder:
    """Feed it chunks with :meth:`feed`; it yields each complete event once."""

    _buffer: str = ""
    _pending_cr: bool = False
    _data: list[str] = attrs.field(factory=list)
    _event: str = ""
    _id: str | None = None
    _retry: int | None = None
    _has_fields: bool = False
    # Incremental: a multi-byte character split across two chunks must not become two U+FFFD.
    _utf8: codecs.IncrementalDecoder = attrs.field(
        factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"), repr=False
    )

    def feed(self, chunk: bytes | str) -> Iterator[ServerSentEvent]:
        """Decode one chunk and yield the events it completes."""
        text = self._utf8.decode(chunk) if isinstance(chunk, bytes) else chunk
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        self._buffer += text
        lines = self._buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._buffer = lines.pop()
        if self._buffer == "" and text.endswith("\r"):
            self._pending_cr = True
        for line in lines:
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        self._has_fields = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._has_fields:
            return None
        event = None
        if self._data:
            event = ServerSentEvent(
                data="\n".join(self._data),
                event=self._event or "message",
                id=self._id,
                retry=self._retry,
            )
        self._data, self._event, self._has_fields = [], "", False
        return event
