"""Conformance: the official JavaScript client, @fal-ai/client, in streaming mode, runs
unchanged against the fal-like emulator.

Node and npm are needed; the package is installed once with npm into a cache directory
(``~/.cache/fal-edit-async/js-client-<version>``). Without node or npm the test is skipped,
except in CI (``CI=true``), where it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from fal_edit_async.emulator import Emulator

JS_CLIENT = "@fal-ai/client@1.10.1"
SCRIPT = Path(__file__).parent / "js" / "subscribe_streaming.cjs"
CACHE = Path.home() / ".cache" / "fal-edit-async" / f"js-client-{JS_CLIENT.rsplit('@', 1)[1]}"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("node and npm are required in CI for the @fal-ai/client check")
        pytest.skip("node or npm is not installed: the @fal-ai/client check needs both")
    return node, npm


def _installed(npm: str) -> Path:
    """The node_modules directory holding the JS client, installed on first use."""
    modules = CACHE / "node_modules"
    if not (modules / "@fal-ai" / "client" / "package.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), JS_CLIENT],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return modules


@pytest.fixture
async def fal_emu() -> AsyncIterator[Emulator]:
    """The fal-like emulator, with log lines and a 202 status stream."""
    async with Emulator.fal_like(workers=2, fast_images=True) as emu:
        yield emu
        assert [] == emu.internal_errors


async def test_js_client_streams_a_job_to_its_result(fal_emu: Emulator, png_data_uri: str) -> None:
    """subscribe(mode="streaming") submits, follows the SSE stream and fetches the result."""
    node, npm = _tools()
    modules = await anyio.to_thread.run_sync(_installed, npm)
    env = {
        **os.environ,
        "EMU_QUEUE": fal_emu.queue_url,
        "EMU_REST": fal_emu.rest_url,
        "FAL_KEY": fal_emu.api_key,
        "INPUT_URL": png_data_uri,
    }
    result = await anyio.run_process([node, str(SCRIPT), str(modules)], env=env, check=False)
    assert 0 == result.returncode, result.stderr.decode()
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])

    assert 1 == report["images"]
    assert report["streamed"]
    assert "COMPLETED" == report["statuses"][-1]
    assert 3 == report["logs"]
    assert 1 <= fal_emu.counters.streams_opened
    assert report["requestId"] in fal_emu.jobs
    assert 0 == fal_emu.counters.unauthorized
