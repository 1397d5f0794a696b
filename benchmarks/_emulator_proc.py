"""The emulator in its own process, driven over stdin/stdout by ``run.py``.

Usage::

    python benchmarks/_emulator_proc.py --workers 64 --processing-time 0.2 --fast-images

It prints one JSON line with ``queue_url``, ``rest_url``, ``cdn_url`` and ``api_key`` once both
servers listen, then answers commands read from stdin, one per line:

* ``counters``: one JSON line of request counters and this process's CPU time;
* ``stats``: the same, plus ``jobs``, each request id's monotonic ``[submitted_at,
  completed_at]`` (``time.monotonic()`` is system-wide on Linux, so the client process can
  subtract it from its own clock);
* ``quit``, or end of input: stop and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
from typing import Any

import aiohttp
from _contenders import ENDPOINT, PROMPT, peak_rss_kb, tiny_png_data_uri

from fal_edit_async.emulator import Emulator

#: The counters reported, as named on :class:`fal_edit_async.emulator.Counters`.
COUNTERS = (
    "submit_attempts",
    "submits",
    "status_polls",
    "streams_opened",
    "result_fetches",
    "cancels",
    "completed",
    "downloads",
    "requests_total",
    "peak_in_flight",
    "peak_downloads",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--processing-time", type=float, default=0.0)
    parser.add_argument("--log-lines", type=int, default=3)
    parser.add_argument("--fast-images", action="store_true")
    parser.add_argument("--output-bytes", type=int, default=None)
    return parser.parse_args(argv)


def snapshot(emu: Emulator, *, jobs: bool) -> dict[str, Any]:
    """Counters, CPU seconds and peak RSS of this process; with ``jobs``, their timestamps."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    counters = emu.counters
    out: dict[str, Any] = {name: getattr(counters, name) for name in COUNTERS}
    out["cpu"] = usage.ru_utime + usage.ru_stime
    out["maxrss_kb"] = peak_rss_kb()
    if jobs:
        out["jobs"] = {rid: [job.submitted_at, job.completed_at] for rid, job in emu.jobs.items()}
    return out


async def prime(emu: Emulator) -> None:
    """Run one job like the benchmark's, so the fast placeholder image is rendered and cached.

    Without it the first wave of jobs all miss the emulator's cache at once and each renders
    the image itself, which would bill seconds of emulator CPU to the first timed round.
    """
    headers = {"Authorization": f"Key {emu.api_key}"}
    arguments = {"prompt": PROMPT, "image_urls": [tiny_png_data_uri()]}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(emu.url_for(ENDPOINT), json=arguments) as resp:
            resp.raise_for_status()
            receipt = await resp.json()
        async with session.get(receipt["status_url"] + "/stream") as resp:
            await resp.read()  # the body ends after the COMPLETED event
        async with session.get(receipt["response_url"]) as resp:
            resp.raise_for_status()


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emulator = Emulator(
        workers=args.workers,
        processing_time=args.processing_time,
        log_lines=args.log_lines,
        fast_images=args.fast_images,
        output_bytes=args.output_bytes,
    )
    async with emulator as emu:
        await prime(emu)
        emit(
            {
                "queue_url": emu.queue_url,
                "rest_url": emu.rest_url,
                "cdn_url": emu.cdn_url,
                "api_key": emu.api_key,
            }
        )
        while raw := await reader.readline():  # b"" at end of input
            command = raw.decode().strip().lower()
            if command == "quit":
                break
            if command in ("stats", "counters"):
                emit(snapshot(emu, jobs=command == "stats"))
            elif command:
                emit({"error": f"unknown command {command!r}"})


def main() -> None:
    asyncio.run(serve(parse_args()))


if __name__ == "__main__":
    main()
