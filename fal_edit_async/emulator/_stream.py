"""The SSE status stream: an event per change, each carrying only the new log lines.

An event goes out at connect and then on every state change or new log line (changes that
arrive together are coalesced into one event); queue position changes alone send nothing. A
``: keep-alive`` comment is written whenever nothing happened for ``keepalive_interval``. The
body ends right after the COMPLETED event, as fal's does.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from ._engine import Engine
from ._hostile import SseFraming
from ._state import EmulatedJob, JobState

__all__ = ["StatusStream"]


class StatusStream:
    """One SSE connection: an event per change, only new log lines each time."""

    def __init__(
        self,
        engine: Engine,
        job: EmulatedJob,
        with_logs: bool,
        framing: SseFraming | None = None,
    ) -> None:
        self.engine = engine
        self.job = job
        self.with_logs = with_logs
        self.sent_logs = 0
        self.framing = framing or SseFraming(None)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Send events until COMPLETED (then end the body), a drop fault, or shutdown."""
        done = self.job.state is JobState.COMPLETED
        response = web.StreamResponse(
            status=200 if done else self.engine.profile.stream_status,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-fal-request-id": self.job.request_id,
            },
        )
        await response.prepare(request)
        self._opened()
        try:
            await self._events(response)
            await response.write_eof()
        except ConnectionError:  # the client went away; nothing to clean up beyond _closed
            pass
        finally:
            self._closed()
        return response

    def _opened(self) -> None:
        job, engine = self.job, self.engine
        job.streams_opened += 1
        job.open_streams += 1
        engine.counters.streams_opened += 1
        engine.counters.streams_with_logs += self.with_logs
        engine.streaming.add(job)
        engine.notify()

    def _closed(self) -> None:
        self.job.open_streams -= 1
        if not self.job.open_streams:
            self.engine.streaming.discard(self.job)
        self.engine.notify()

    async def _events(self, response: web.StreamResponse) -> None:
        job, engine = self.job, self.engine
        drop_checked = False
        for event in self.framing.first_events():
            await self._write(response, event)
        while not engine.closing:
            changed = job.changed_event()
            # The state the events describe: the job may complete while they are written.
            completed = job.state is JobState.COMPLETED
            for event in self._events_now():
                await self._write(response, event)
            if completed:
                return
            if not drop_checked:
                drop_checked = True
                if engine.plan.take("stream_drop") is not None:
                    return  # end the body cleanly before COMPLETED
            await self._wait(changed, response)

    def _events_now(self) -> list[bytes]:
        payload = self.engine.status_payload(
            self.job, self.with_logs, self.sent_logs, streamed=True
        )
        self.sent_logs = len(self.job.logs)
        if self.framing.kind is None:
            return [b"data: " + json.dumps(payload).encode() + b"\n\n"]
        return [self.framing.event(p) for p in self.framing.payload(payload)]

    async def _write(self, response: web.StreamResponse, event: bytes) -> None:
        pieces = self.framing.pieces(event)
        for piece in pieces:
            await response.write(piece)
            if len(pieces) > 1:
                # Let the loop send this piece on its own, so the client reads it on its own.
                await asyncio.sleep(0)

    async def _wait(self, changed: asyncio.Event, response: web.StreamResponse) -> None:
        interval = self.engine.keepalive_interval
        while not changed.is_set():
            try:
                async with asyncio.timeout(interval):
                    await changed.wait()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
