"""A status stream whose bytes are already buffered still lets other tasks run.

A read of buffered bytes returns without suspending. The in-memory transport here never
suspends at all, as a fast server whose bytes outrun our parsing would not: the stream must
yield to the loop after each large chunk itself, or every other task waits for its end.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from fal_edit_async import AsyncClient, MockTransport, Request, Response

QUEUE = "https://queue.example"
CHUNK = 32 * 1024
CHUNKS = 64
COMPLETED = b'data: {"status": "COMPLETED", "request_id": "r1", "logs": []}\n\n'

pytestmark = pytest.mark.anyio


def _stream(request: Request) -> Response:
    assert request.url.endswith("/status/stream"), request.url
    # Comments (keep-alives) fill whole chunks; the verdict comes after all of them.
    keepalive = b":" + b"x" * (CHUNK - 2) + b"\n"
    body = keepalive * CHUNKS + b"\n" + COMPLETED
    return Response(status=200, headers={"Content-Type": "text/event-stream"}, body=body)


async def test_a_buffered_stream_of_large_chunks_yields_to_other_tasks() -> None:
    ticks = 0
    streaming = anyio.Event()

    async def probe() -> None:
        nonlocal ticks
        await streaming.wait()
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    transport = MockTransport(_stream, chunk_size=CHUNK)
    async with AsyncClient(api_key="k", queue_url=QUEUE, transport=transport) as fal:
        handle = fal.handle("r1")
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            streaming.set()
            statuses = [s async for s in handle.updates(logs=False)]
            seen = ticks
            tg.cancel_scope.cancel()
    assert ["COMPLETED"] == [type(s).__name__.upper() for s in statuses]
    # Without a yield per large chunk, the probe runs only while the request is set up.
    assert seen >= CHUNKS // 2, seen
