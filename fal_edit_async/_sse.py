"""A server-sent events decoder: bytes in, events out, no I/O.

Follows the WHATWG event-stream rules that matter for fal's status stream: LF, CRLF and CR
line endings; ``:`` comments (keep-alives) ignored; ``data:`` lines of one event joined with
newlines; ``event:``, ``id:`` and ``retry:`` kept; unknown fields ignored; an event ends at
a blank line. Chunks may split lines (or a CRLF pair, or a UTF-8 character) anywhere.

Linear in what it is fed: only the new chunk is searched for line breaks (a long line
arriving in small chunks is not rescanned each time), and ``max_event_bytes`` bounds both a
line and an event, so a server that never ends one cannot fill the memory.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator

import attrs

from ._exceptions import ProtocolError

__all__ = ["EventTooLargeError", "SSEDecoder", "ServerSentEvent"]

_BREAK = re.compile(r"\r\n|\r|\n")


class EventTooLargeError(ProtocolError):
    """An event (or one of its lines) grew past the decoder's ``max_event_bytes``."""


@attrs.frozen(kw_only=True)
class ServerSentEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


@attrs.define
class SSEDecoder:
    """Feed it chunks with :meth:`feed`; it yields each complete event once.

    Args:
        max_event_bytes: the largest line or event (in characters, after decoding); more
            raises :class:`EventTooLargeError`. None for no bound.
    """

    max_event_bytes: int | None = None
    # The line being received. One growing buffer, not a list of the chunks: a long line in
    # tiny chunks would cost a str object (~50 bytes) and a list slot per chunk.
    _partial: io.StringIO = attrs.field(factory=io.StringIO, repr=False)
    _partial_len: int = 0
    _pending_cr: bool = False
    _data: list[str] = attrs.field(factory=list)
    _data_len: int = 0
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
        start = 0
        for match in _BREAK.finditer(text):
            line = self._take_line(text[start : match.start()])
            start = match.end()
            event = self._line(line)
            if event is not None:
                yield event
        rest = text[start:]
        if rest:
            self._partial.write(rest)
            self._partial_len += len(rest)
            self._check(self._partial_len, "line")
        elif text.endswith("\r"):
            self._pending_cr = True

    def _take_line(self, tail: str) -> str:
        if not self._partial_len:
            return tail
        self._partial.write(tail)
        line = self._partial.getvalue()
        self._partial = io.StringIO()
        self._partial_len = 0
        return line

    def _check(self, size: int, what: str) -> None:
        limit = self.max_event_bytes
        if limit is not None and size > limit:
            raise EventTooLargeError(
                f"status stream {what} longer than {limit} bytes (Limits.max_event_bytes)"
            )

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        self._check(len(line), "line")
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        self._has_fields = True
        if name == "data":
            self._data.append(value)
            self._data_len += len(value) + 1
            self._check(self._data_len, "event")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():  # not "²": WHATWG
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
        self._data, self._data_len, self._event, self._has_fields = [], 0, "", False
        return event
