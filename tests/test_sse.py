"""The SSE decoder, fed byte chunks split in every awkward place."""

from __future__ import annotations

import pytest

from fal_edit_async._sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_plain_data_events() -> None:
    """Each blank-line-terminated block with data becomes one event."""
    assert decode(b'data: {"a":1}\n\ndata: {"b":2}\n\n') == [
        ServerSentEvent(data='{"a":1}'),
        ServerSentEvent(data='{"b":2}'),
    ]


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"data: x\r\n\r\n", id="crlf"),
        pytest.param(b"data: x\r\r", id="cr"),
        pytest.param(b": keep-alive\n\ndata: x\n\n", id="comment-first"),
        pytest.param(b"event: status\nid: 7\nretry: 100\ndata: x\n\n", id="other-fields"),
        pytest.param(b"foo: bar\ndata: x\n\n", id="unknown-field"),
    ],
)
def test_line_endings_comments_and_fields(stream: bytes) -> None:
    """CRLF and CR endings, comments and extra fields all still give the one data event."""
    events = decode(stream)
    assert [e.data for e in events] == ["x"]


def test_every_split_point() -> None:
    """Splitting the byte stream at any offset, CRLF pairs included, changes nothing."""
    stream = b': ping\r\n\r\ndata: {"status":"IN_QUEUE"}\r\nevent: s\r\n\r\ndata: two\r\n\r\n'
    whole = decode(stream)
    assert [e.data for e in whole] == ['{"status":"IN_QUEUE"}', "two"]
    for cut in range(1, len(stream)):
        assert decode(stream[:cut], stream[cut:]) == whole, cut


def test_multiline_data_and_fields_kept() -> None:
    """Several data lines join with newlines; event, id and retry are reported."""
    (event,) = decode(b"event: status\nid: 3\nretry: 250\ndata: a\ndata: b\n\n")
    assert event == ServerSentEvent(data="a\nb", event="status", id="3", retry=250)


def test_incomplete_event_is_held_back() -> None:
    """An event is only dispatched once its terminating blank line arrives."""
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: x\n")) == []
    assert [e.data for e in decoder.feed(b"\n")] == ["x"]


def test_comment_only_block_is_not_an_event() -> None:
    """A keep-alive comment followed by a blank line dispatches nothing."""
    assert decode(b": keep-alive\n\n: again\n\n") == []
