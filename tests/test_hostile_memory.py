"""A hostile server cannot exhaust the client's memory or block its event loop.

Each attack the issue measured (endless ``data:`` lines, endless log events, a 300 MB result,
an 8 MB event line in 4 KiB chunks) is played by a loopback server here against a client
in a process of its own (tests/hostile_memory_worker.py), which reports its peak RSS and the
longest stall of its event loop, seen by a probe that sleeps 5 ms at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

WORKER = Path(__file__).with_name("hostile_memory_worker.py")
MAX_RSS_MB = 100
MAX_LAG_MS = 50
MiB = 2**20
ROOT = "/fal-ai/gpt-image-1/requests/job-1"
COMPLETED = {"status": "COMPLETED", "request_id": "job-1", "logs": None, "metrics": {}}


def _stream_response() -> web.StreamResponse:
    return web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})


async def endless_data_lines(request: web.Request) -> web.StreamResponse:
    """``data:`` lines that never end their event (3.8 GB in 20 s, unbounded)."""
    response = _stream_response()
    await response.prepare(request)
    line = b"data: " + b"x" * (64 * 1024 - 7) + b"\n"
    try:
        for _ in range(4096):  # 256 MiB, unless the client stops reading first
            await response.write(line)
    except ConnectionError:
        pass
    return response


async def endless_logs(request: web.Request) -> web.StreamResponse:
    """Events of fresh log lines, 100 MB of them, then COMPLETED."""
    response = _stream_response()
    await response.prepare(request)
    filler = "y" * 1000
    try:
        for event in range(1000):
            logs = [{"message": f"{event:05d}-{n:03d} {filler}"} for n in range(100)]
            payload = {"status": "IN_PROGRESS", "logs": logs}
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        await response.write(b"data: " + json.dumps(COMPLETED).encode() + b"\n\n")
    except ConnectionError:
        pass
    return response


async def long_line_in_small_chunks(request: web.Request) -> web.StreamResponse:
    """One 8 MB event line, sent 4 KiB at a time (the decoder must not rescan it)."""
    response = _stream_response()
    await response.prepare(request)
    chunk = b"z" * 4096
    try:
        await response.write(b'data: {"status": "IN_PROGRESS", "logs": [{"message": "')
        for _ in range(8 * MiB // 4096):
            await response.write(chunk)
        await response.write(b'"}]}\n\n')
    except ConnectionError:
        pass
    return response


async def huge_result(request: web.Request) -> web.StreamResponse:
    """A 300 MB result body."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    block = b" " * MiB
    try:
        await response.write(b'{"images": [{"url": "')
        for _ in range(300):
            await response.write(block)
    except ConnectionError:
        pass
    return response


async def completed_status(request: web.Request) -> web.Response:
    """Polling (after a stream the client gave up on) finds the job done."""
    return web.json_response(COMPLETED)


ATTACKS = {
    "data_lines": endless_data_lines,
    "logs": endless_logs,
    "long_line": long_line_in_small_chunks,
    "result_body": huge_result,
}


@pytest.fixture
async def hostile(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A loopback server playing the attack named by the test's parameter."""
    app = web.Application()
    stream = ATTACKS[request.param]
    app.router.add_get(ROOT + "/status/stream", stream)
    app.router.add_get(ROOT + "/status", completed_status)
    app.router.add_get(ROOT, huge_result)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


EXPECTED = {
    "data_lines": "ok logs=0",  # the stream is given up, polling finds the job done
    "logs": "ok logs=10000",  # Limits.max_log_lines: the last lines only
    "long_line": "ok logs=0",
    "result_body": "AnswerTooLargeError",  # a ProtocolError: Limits.max_response_bytes
}


@pytest.mark.parametrize("hostile", list(ATTACKS), indirect=True)
async def test_attack_stays_under_100_mb_and_never_blocks_the_loop(
    hostile: str, request: pytest.FixtureRequest
) -> None:
    """The client survives the attack with bounded memory and a responsive loop."""
    name = request.node.callspec.params["hostile"]
    result = await anyio.run_process(
        [sys.executable, str(WORKER), name, hostile], check=False, stderr=subprocess.STDOUT
    )
    assert 0 == result.returncode, result.stdout.decode()
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])

    assert EXPECTED[name] == report["outcome"]
    assert report["rss_mb"] < MAX_RSS_MB, report
    assert report["max_lag_ms"] < MAX_LAG_MS, report
