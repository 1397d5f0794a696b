"""``fal-edit --help`` starts fast because building the parser loads only what it needs.

Each test starts a fresh interpreter and reads which modules it loaded: the set, never a time.
Help, ``--version``, ``help COMMAND`` and ``completion`` must load no HTTP client, async runtime,
batch runner, emulator server or image library; a command loads its implementation when it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Modules (and their submodules) the parser must not load, by the cost they would add.
HEAVY = (
    "aiohttp",
    "anyio",
    "asyncio",
    "PIL",
    "rich",
    "fal_edit_async._batch",
    "fal_edit_async._client",
    "fal_edit_async._transport",
    "fal_edit_async._cli._commands",
    "fal_edit_async._cli._run",
    "fal_edit_async._cli._jobs",
    "fal_edit_async.emulator._emulator",
    "fal_edit_async.emulator._app",
    "fal_edit_async.emulator._engine",
)

#: Runs ``main(argv)`` and prints its exit status, what it wrote and every loaded module.
_PROBE = """
import contextlib, io, json, sys
from fal_edit_async._cli import main
shown = io.StringIO()
with contextlib.redirect_stdout(shown):
    try:
        status = main(sys.argv[1:])
    except SystemExit as exit:
        status = exit.code
print(json.dumps({"status": status, "shown": shown.getvalue(), "modules": sorted(sys.modules)}))
"""


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def _probe(*argv: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], check=True, capture_output=True, text=True
    )
    probed: dict[str, object] = json.loads(done.stdout)
    return probed


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-arguments"),
        pytest.param(["--help"], id="help"),
        pytest.param(["--version"], id="version"),
        pytest.param(["edit", "--help"], id="edit-help"),
        pytest.param(["status", "--help"], id="status-help"),
        pytest.param(["emulator", "--help"], id="emulator-help"),
        pytest.param(["help", "journal", "show"], id="help-command"),
        pytest.param(["completion", "bash"], id="completion"),
    ],
)
def test_help_loads_no_heavy_module(argv: list[str]) -> None:
    """Help, the version and completion scripts come from the parser alone."""
    probed = _probe(*argv)
    modules = probed["modules"]
    assert isinstance(modules, list)

    assert 0 == probed["status"]
    assert "fal-edit" in str(probed["shown"])
    assert "fal_edit_async._cli" in modules  # the probe really ran the CLI
    assert [] == _heavy(modules)


def test_python_m_help_loads_no_heavy_module() -> None:
    """``python -m fal_edit_async --help`` (the benchmarked command) loads none either."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fal_edit_async", "--help"],
        check=True,
        capture_output=True,
        text=True,
    )
    # Each stderr line is "import time: self | cumulative | module", indented by depth.
    modules = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if "|" in line]

    assert "usage: fal-edit" in done.stdout
    assert "fal_edit_async._cli" in modules
    assert [] == _heavy(modules)


def test_a_command_loads_its_implementation_when_it_runs() -> None:
    """The lazy handlers are wired: a job command without a key loads its code and exits 2."""
    code = (
        "import os, sys\n"
        "for name in ('FAL_KEY', 'FAL_KEY_ID', 'FAL_KEY_SECRET'):\n"
        "    os.environ.pop(name, None)\n"
        "from fal_edit_async._cli import main\n"
        "assert 2 == main(['status', 'some-request-id'])\n"
        "assert 'fal_edit_async._cli._commands' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
