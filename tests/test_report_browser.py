"""The HTML report in a real browser: headless Chromium, driven over the DevTools protocol.

A run against the emulator writes the report; its folder is then moved, to prove the page
links its images relatively. Chromium loads the page from disk with background networking off;
the test collects every console message, exception and network request, then checks the items
and their images, the filter by state, and a screenshot. Outside CI a missing ``chromium``
skips the test (``bash .ci/run`` installs it); with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from PIL import Image, ImageStat

from fal_edit_async._cli import main

from .test_cli_support import emulator_thread, write_images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: A backstop only: each step waits for the browser's own events.
BROWSER_TIMEOUT = 60


def _need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (bash .ci/run installs Debian's chromium)")
    return CHROMIUM


class Page:
    """One browser tab over the DevTools protocol: commands, and the events it sent."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        call = self.next_id
        await self.ws.send_json({"id": call, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == call:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    async def wait_event(self, method: str) -> dict[str, Any]:
        for seen in self.events:
            if seen.get("method") == method:
                self.events.remove(seen)
                return seen
        while True:
            message = await self.ws.receive_json()
            if message.get("method") == method:
                return message
            self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and log entries of level error."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
                found.append(json.dumps(params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def requested(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]


@asynccontextmanager
async def chromium(binary: str, profile: Path) -> AsyncIterator[Page]:
    """A headless Chromium and its first tab."""
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        "about:blank",
    ]
    async with await anyio.open_process(command) as process:
        try:
            assert process.stderr is not None
            stderr = BufferedByteReceiveStream(process.stderr)
            while True:  # Chromium says where its DevTools listen, on stderr
                line = (await stderr.receive_until(b"\n", 65536)).decode()
                if line.startswith("DevTools listening on "):
                    port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                    break
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as answer:
                    targets = await answer.json()
                url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                async with http.ws_connect(url, max_msg_size=64 * 2**20) as ws:
                    page = Page(ws)
                    for domain in ("Runtime", "Log", "Page", "Network"):
                        await page.send(f"{domain}.enable")
                    yield page
        finally:
            process.terminate()


async def _inspect(binary: str, page_path: Path, profile: Path) -> dict[str, Any]:
    with anyio.fail_after(BROWSER_TIMEOUT):
        async with chromium(binary, profile) as page:
            await page.send("Page.navigate", url=page_path.as_uri())
            await page.wait_event("Page.loadEventFired")
            seen: dict[str, Any] = {}
            seen["items"] = await page.evaluate("document.querySelectorAll('.item').length")
            seen["images"] = await page.evaluate(
                "Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0,"
                " i.getBoundingClientRect().width > 0, i.closest('.item').dataset.state])"
            )
            seen["shown_all"] = await page.evaluate("document.getElementById('shown').textContent")
            await page.evaluate("document.querySelector('button[data-state=failed]').click()")
            seen["shown_failed"] = await page.evaluate(
                "Array.from(document.querySelectorAll('.item:not([hidden])'))"
                ".map(i => i.dataset.state)"
            )
            seen["hash"] = await page.evaluate("location.hash")
            await page.evaluate("document.querySelector('button[data-state=all]').click()")
            shot = await page.send("Page.captureScreenshot", format="png")
            page_path.with_name("screenshot.png").write_bytes(base64.b64decode(shot["data"]))
            seen["screenshot"] = base64.b64decode(shot["data"])
            seen["problems"] = page.problems()
            seen["requested"] = page.requested()
    return seen


def test_the_report_opens_offline_in_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report of a run, moved elsewhere, loads in Chromium without a console error or a
    network request; every item and its images show; the filter shows only failed items; the
    screenshot is not blank."""
    binary = _need_chromium()
    run = tmp_path / "run"
    write_images(run / "photos", "harbour.png", "beach.png", "<i>odd & #name? 100%.png")
    (run / "photos" / "fake.png").write_bytes(b"not a png at all")
    with emulator_thread(monkeypatch) as _:
        argv = ["edit", "pixel art", str(run / "photos"), "--out", str(run / "out")]
        assert 1 == main([*argv, "--report", str(run / "out" / "report.html"), "--quiet"])
    capsys.readouterr()
    moved = tmp_path / "elsewhere"
    shutil.move(run, moved)  # relative links: the folder can be moved or shared

    seen = anyio.run(_inspect, binary, moved / "out" / "report.html", tmp_path / "profile")

    assert [] == seen["problems"]
    assert all(url.startswith(("file://", "data:")) for url in seen["requested"])
    assert 4 == seen["items"] and "4" == seen["shown_all"]
    done = [img for img in seen["images"] if img[2] == "done"]
    assert 6 == len(done)  # three inputs beside three outputs
    assert all(loaded and visible for loaded, visible, _ in seen["images"])
    assert ["failed"] == seen["shown_failed"] and "#state=failed" == seen["hash"]
    with Image.open(io.BytesIO(seen["screenshot"])) as shot:
        gray = shot.convert("L")
        size, spread = shot.size, ImageStat.Stat(gray).stddev[0]
        shades = sum(1 for n in gray.histogram() if n)
    assert 1280 == size[0] and size[1] > 400
    assert spread > 10  # text, cards and images: far from one flat colour
    assert shades > 20
