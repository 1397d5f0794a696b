"""A fal-compatible emulator: test your code against a local fal queue, storage and CDN.

It speaks fal's queue protocol for ``fal-ai/gpt-image-1/edit-image`` (and any endpoint id)
closely enough that the official ``fal_client`` runs against it unchanged, renders real
images, injects faults on demand, and lets tests hold and release jobs and downloads instead
of sleeping, and plays a hostile server on request (``HOSTILE_KINDS``: redirects, bodies that
are not JSON, unknown statuses, odd SSE framing, hostile file names...). It is as
unforgiving as fal where money is at stake: ``Counters.billed_by_input`` counts what fal
would bill, cancels of running jobs may be ignored (``cancel_running``), results expire
(``result_ttl``, ``Emulator.expire_result``), and a submit may be queued yet answered 5xx
(``server_error_after_queue``). Needs the ``emulator`` extra (Pillow).

Usage::

    from fal_edit_async.emulator import Emulator, Faults

    async with Emulator(workers=4, faults=Faults(seed=1, rate_limit=0.05)) as emu:
        print(emu.queue_url, emu.cdn_url, emu.api_key)

From a shell: ``python -m fal_edit_async.emulator --port 8080``; ``add_arguments`` and ``run``
put the same command line into another program's parser (``fal-edit emulator`` does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._cli import add_arguments as add_arguments, main as main, run as run
from ._faults import (
    ERROR_TYPES as ERROR_TYPES,
    HOSTILE_KINDS as HOSTILE_KINDS,
    QUEUE_ROUTES as QUEUE_ROUTES,
    ROUTES as ROUTES,
    Faults as Faults,
)
from ._profile import FAL_PROFILE as FAL_PROFILE, Profile as Profile
from ._validation import validate_input as validate_input

if TYPE_CHECKING:  # loaded on first use (see __getattr__); listed here for type checkers
    from ._emulator import (
        DEFAULT_MAX_UPLOAD_BYTES as DEFAULT_MAX_UPLOAD_BYTES,
        Emulator as Emulator,
    )
    from ._state import (
        Counters as Counters,
        EmulatedJob as EmulatedJob,
        JobState as JobState,
        input_key as input_key,
    )

#: Names whose modules import the server (aiohttp, Pillow) or asyncio: they load on first
#: use, so that ``add_arguments`` (and so ``fal-edit --help``) stays fast.
_LAZY: dict[str, str] = {
    "Counters": "._state",
    "DEFAULT_MAX_UPLOAD_BYTES": "._emulator",
    "EmulatedJob": "._state",
    "Emulator": "._emulator",
    "JobState": "._state",
    "input_key": "._state",
}

__all__ = [
    "Counters",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "ERROR_TYPES",
    "EmulatedJob",
    "Emulator",
    "FAL_PROFILE",
    "Faults",
    "HOSTILE_KINDS",
    "JobState",
    "Profile",
    "QUEUE_ROUTES",
    "ROUTES",
    "add_arguments",
    "input_key",
    "main",
    "run",
    "validate_input",
]


def _report_home(names: list[str]) -> None:
    """Reprs and tracebacks say fal_edit_async.emulator.X, not the private module."""
    for name in names:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith(__name__ + "._"):
            obj.__module__ = __name__


def __getattr__(name: str) -> Any:
    """Load the lazy names, all at once: a class reports its home however it was reached."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for lazy, module in _LAZY.items():
        globals()[lazy] = getattr(importlib.import_module(module, __name__), lazy)
    _report_home(list(_LAZY))
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


_report_home([name for name in __all__ if name not in _LAZY])
