"""Run one memory attack's client side in a process of its own, and report.

``python hostile_memory_worker.py <attack> <server url>`` prints one JSON line: the peak
resident memory of this process (MiB), the longest the event loop was blocked (ms), and how
the client's call ended. The server (tests/test_hostile_memory.py) plays the attack.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from pathlib import Path

from fal_edit_async import AsyncClient, FalEditError, RetryPolicy

PROBE = 0.005  # seconds between the loop-lag probe's wake-ups


async def probe(lags: list[float]) -> None:
    """Record how much later than asked each short sleep wakes: the loop's lag.

    Only the part spent running counts (this thread's CPU time over the same interval):
    on a loaded machine the process also waits for a core, which no code of ours causes.
    """
    while True:
        start, cpu = time.perf_counter(), time.thread_time()
        await asyncio.sleep(PROBE)
        late = time.perf_counter() - start - PROBE
        lags.append(min(late, time.thread_time() - cpu))


async def attack(name: str, url: str) -> str:
    """Follow the server's one job; the outcome's kind, or ``ok``."""
    retry = RetryPolicy(wait=False, max_attempts=1)
    async with AsyncClient(api_key="k", queue_url=url, rest_url=url, retry=retry) as fal:
        handle = fal.handle("job-1")
        try:
            if name == "result_body":
                await handle.fetch_result()
            else:
                completed = await handle.wait()
                return f"ok logs={len(completed.logs)}"
        except FalEditError as exc:
            return type(exc).__name__
    return "ok"


async def main(name: str, url: str) -> None:
    # What the imports made is not the client's doing: a full collection of it all would
    # show as loop lag (tens of ms) in any program. Applications do the same (gc.freeze).
    gc.collect()
    gc.freeze()
    lags: list[float] = []
    task = asyncio.create_task(probe(lags))
    await asyncio.sleep(PROBE * 2)
    outcome = await attack(name, url)
    task.cancel()
    print(json.dumps({"rss_mb": peak_rss_mb(), "max_lag_ms": max(lags) * 1000, "outcome": outcome}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux keeps ``ru_maxrss`` across the exec that
    started us (so it may be the parent's peak): its ``VmHWM`` is our own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
