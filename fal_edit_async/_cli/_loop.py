"""Which event loop the commands run on: uvloop when it is installed, else asyncio's own.

uvloop comes with the ``speed`` extra (and so with ``cli``). Measured on the batch pipeline
(``benchmarks/``, 1,000 jobs with downloads and a journal), it takes 8-14 % less CPU per job
than asyncio's loop at 256 in flight, where the loop is the bottleneck (two runs; wall time
2-17 % less), and makes no measurable difference at 64. The bare aiohttp floor gains as
much or more. ``FAL_EDIT_LOOP=asyncio`` turns it off (a bug to tell from ours, a platform
where it misbehaves); ``FAL_EDIT_LOOP=uvloop`` insists on it.

The commands also collect cyclic garbage less often (:data:`GC_THRESHOLD`): a batch of
256 jobs in flight allocates so fast that Python's default (a young collection every 700
allocations) runs several hundred collections a second, each walking every young object.
Measured on the same pipeline, interleaved pairs (6-8 each): 13-19 % less wall time and
14-22 % less CPU per job, on uvloop and on asyncio's loop alike. The library never touches
the collector either: that too is the application's choice.

The library never chooses a loop: an application runs on the loop it started.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar, TypeVarTuple

import anyio

from ._inputs import UsageError

__all__ = ["GC_THRESHOLD", "LOOP_ENVIRONMENT", "run", "use_uvloop"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Allocations between two young-generation collections while a command runs (Python's
#: default is 700). Cycles wait a little longer to be freed; a batch's memory barely moves.
GC_THRESHOLD = 10_000

#: The environment variable that chooses the loop: ``asyncio``, ``uvloop`` or ``auto``.
LOOP_ENVIRONMENT = "FAL_EDIT_LOOP"


def use_uvloop(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the commands run on uvloop, as ``FAL_EDIT_LOOP`` and what is installed say.

    Raises:
        UsageError: ``FAL_EDIT_LOOP`` is not ``asyncio``, ``uvloop``, ``auto`` or empty, or
            it asks for uvloop and uvloop is not installed.
    """
    env = os.environ if environ is None else environ
    wanted = env.get(LOOP_ENVIRONMENT, "").strip().lower() or "auto"
    if wanted not in ("auto", "asyncio", "uvloop"):
        msg = f"{LOOP_ENVIRONMENT} must be asyncio, uvloop or auto, not {env[LOOP_ENVIRONMENT]!r}"
        raise UsageError(msg)
    if wanted == "asyncio":
        return False
    try:
        import uvloop  # imported here, so that a broken install falls back

        if not callable(getattr(uvloop, "new_event_loop", None)):  # what anyio will call
            raise ImportError("it has no new_event_loop")
    except Exception as exc:  # not installed, built for another Python, or broken anyhow
        if wanted == "uvloop":
            msg = f"{LOOP_ENVIRONMENT}=uvloop, but uvloop cannot be imported ({exc}): "
            raise UsageError(msg + "pip install uvloop") from None
        return False
    return True


def run(func: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """``anyio.run(func, *args)`` on the loop :func:`use_uvloop` chooses, collecting cyclic
    garbage every :data:`GC_THRESHOLD` allocations instead of 700 (the older generations'
    thresholds unchanged)."""
    options = {"use_uvloop": use_uvloop()}
    young, middle, old = gc.get_threshold()
    if young:  # 0: the collector was turned off, and stays so
        gc.set_threshold(max(young, GC_THRESHOLD), middle, old)
    try:
        return anyio.run(func, *args, backend="asyncio", backend_options=options)
    finally:
        gc.set_threshold(young, middle, old)
