"""Helpers for tests that run the CLI as a process against an emulator, and kill it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fal_edit_async.emulator import Emulator

PROMPT = "Make this pixel-art style."


def cli_env(emu: Emulator, **extra: str) -> dict[str, str]:
    """This environment without any ``FAL_*`` (or ``ATK*``) variable, pointed at ``emu``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "ATK"))}
    return {
        **env,
        "FAL_KEY": emu.api_key,
        "FAL_QUEUE_URL": emu.queue_url,
        "FAL_REST_URL": emu.rest_url,
        "FAL_API_URL": emu.rest_url,
        **extra,
    }


def edit_args(tmp_path: Path, *extra: str) -> list[str]:
    """``fal-edit edit`` of ``tmp_path/in`` into ``tmp_path/out`` with a journal, as JSON."""
    return [
        "edit",
        PROMPT,
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
        "--journal",
        str(tmp_path / "run.journal"),
        "--json",
        "--quiet",
        *extra,
    ]


def edit_command(tmp_path: Path, *extra: str) -> list[str]:
    """:func:`edit_args` as a command line: this interpreter, ``-m fal_edit_async``."""
    return [sys.executable, "-m", "fal_edit_async", *edit_args(tmp_path, *extra)]


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)
