"""The emulator in the foreground: its banner, an optional request log, and a clean stop on
SIGINT or SIGTERM (``python -m fal_edit_async.emulator`` and ``fal-edit emulator``)."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import time
from typing import TextIO

from ._emulator import Emulator

__all__ = ["banner", "serve"]


def serve(emulator: Emulator, out: TextIO, *, verbose: bool = False) -> int:
    """Serve until SIGINT or SIGTERM, printing the banner first; returns the exit code."""
    return asyncio.run(_serve(emulator, out, verbose=verbose))


def banner(emu: Emulator) -> list[str]:
    """The lines printed at start: URLs, the key, and paste-ready ``export`` lines."""
    return [
        f"emulator queue URL: {emu.queue_url}",
        f"emulator CDN URL:   {emu.cdn_url}",
        f"emulator API key:   {emu.api_key} (the only key it accepts)",
        "fal_edit_async emulator: a local stand-in for fal.ai, not the real service; nothing "
        "is paid. Point fal-edit (or fal-client) at it by pasting:",
        f"  export FAL_QUEUE_URL={shlex.quote(emu.queue_url)}",
        f"  export FAL_REST_URL={shlex.quote(emu.rest_url)}",
        f"  export FAL_API_URL={shlex.quote(emu.api_url)}",
        f"  export FAL_KEY={shlex.quote(emu.api_key)}",
        "Ctrl-C to stop.",
    ]


async def _log_requests(emulator: Emulator, out: TextIO) -> None:
    """Print each request the emulator answered, as it is logged (``--verbose``)."""
    seen = 0
    while True:
        log = emulator.counters.request_log
        for _, method, path, status in log[seen:]:
            at = time.strftime("%H:%M:%S")
            answer = status if status else "dropped"
            print(f"{at} {method} {path} {answer}", file=out, flush=True)
        seen = len(log)
        await asyncio.sleep(0.2)  # a display's refresh, not synchronisation


async def _serve(emulator: Emulator, out: TextIO, *, verbose: bool = False) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with emulator as emu:
            print("\n".join(banner(emu)), file=out, flush=True)
            logger = asyncio.ensure_future(_log_requests(emu, out)) if verbose else None
            await stop.wait()
            if logger is not None:
                logger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await logger
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("emulator stopped", file=out, flush=True)
    return 0
