"""Unit tests of the emulator's parts: validation, queue index, gates, images, routes."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from anyio import wait_all_tasks_blocked
from PIL import Image

from fal_edit_async.emulator import EmulatedJob, input_key, validate_input
from fal_edit_async.emulator._app import classify
from fal_edit_async.emulator._images import EditSpec, edit, pad, pick_size, transform_of
from fal_edit_async.emulator._state import JobQueue, JobState
from fal_edit_async.emulator._sync import Gate

from .emu_helpers import png_bytes

GOOD: dict[str, Any] = {"prompt": "p", "image_urls": ["https://x.test/a.png"]}


@pytest.mark.parametrize(
    ("changes", "loc", "kind"),
    [
        pytest.param({"prompt": None}, ["body", "prompt"], "string_type", id="prompt-null"),
        pytest.param({"prompt": "  "}, ["body", "prompt"], "string_too_short", id="prompt-blank"),
        pytest.param({"image_urls": "x"}, ["body", "image_urls"], "list_type", id="urls-str"),
        pytest.param({"image_urls": []}, ["body", "image_urls"], "too_short", id="urls-empty"),
        pytest.param({"image_urls": [1]}, ["body", "image_urls", 0], "string_type", id="url-int"),
        pytest.param(
            {"image_urls": ["a", "ftp://x"]}, ["body", "image_urls", 0], "url_parsing", id="url"
        ),
        pytest.param({"image_size": "512x512"}, ["body", "image_size"], "literal_error", id="size"),
        pytest.param({"background": "clear"}, ["body", "background"], "literal_error", id="bg"),
        pytest.param({"quality": "ultra"}, ["body", "quality"], "literal_error", id="quality"),
        pytest.param(
            {"input_fidelity": "mid"}, ["body", "input_fidelity"], "literal_error", id="fidelity"
        ),
        pytest.param(
            {"output_format": "gif"}, ["body", "output_format"], "literal_error", id="format"
        ),
        pytest.param({"num_images": True}, ["body", "num_images"], "int_type", id="n-bool"),
        pytest.param({"num_images": 2.0}, ["body", "num_images"], "int_type", id="n-float"),
        pytest.param({"num_images": 0}, ["body", "num_images"], "greater_than_equal", id="n-0"),
        pytest.param({"num_images": 5}, ["body", "num_images"], "less_than_equal", id="n-5"),
        pytest.param({"sync_mode": "yes"}, ["body", "sync_mode"], "bool_type", id="sync"),
    ],
)
def test_validation_errors(changes: dict[str, Any], loc: list[Any], kind: str) -> None:
    """Each bad field gives one FastAPI-style error naming its location and type."""
    errors = validate_input({**GOOD, **changes})
    assert (loc, kind) == (errors[0]["loc"], errors[0]["type"])
    assert errors[0]["msg"]


def test_validation_accepts_good_input() -> None:
    """Every allowed value passes; unknown fields are ignored; data URIs are images."""
    body = {
        **GOOD,
        "image_urls": ["http://a.test/x", "data:image/png;base64,AAAA"],
        "image_size": "1536x1024",
        "background": "transparent",
        "quality": "high",
        "input_fidelity": "low",
        "num_images": 4,
        "output_format": "webp",
        "sync_mode": False,
        "seed": 42,
    }
    assert [] == validate_input(body)


def test_validation_of_missing_fields_and_non_objects() -> None:
    """Missing required fields are reported; a non-object body is one error at ``body``."""
    assert [["body", "prompt"], ["body", "image_urls"]] == [e["loc"] for e in validate_input({})]
    assert [["body"]] == [e["loc"] for e in validate_input([1, 2])]


def make_job(n: int) -> EmulatedJob:
    """A bare job record for queue tests."""
    return EmulatedJob(
        request_id=str(n), endpoint_id="a/b", app_root="a/b", input={}, input_hash=""
    )


def test_queue_positions_with_removals() -> None:
    """Positions count queued jobs ahead, after pops and removals from the middle."""
    queue = JobQueue()
    jobs = [make_job(i) for i in range(10)]
    for job in jobs:
        queue.push(job)
    assert list(range(10)) == [queue.position(job) for job in jobs]
    for index in (3, 4, 8):
        jobs[index].state = JobState.COMPLETED
        queue.remove(jobs[index])
    popped = queue.pop()
    assert popped is jobs[0]
    popped.state = JobState.IN_PROGRESS
    remaining = [job for job in jobs if job.state is JobState.IN_QUEUE]
    assert list(range(6)) == [queue.position(job) for job in remaining]
    assert 6 == len(queue)
    order = []
    while (next_job := queue.pop()) is not None:
        next_job.state = JobState.IN_PROGRESS
        order.append(next_job)
    assert remaining == order


async def test_gate_semantics() -> None:
    """A held gate blocks; release(n) frees n waiters and banks the rest; release() opens it."""
    changes: list[int] = []
    gate = Gate(lambda: changes.append(1))
    assert gate.try_pass()
    gate.hold()
    waiters = [asyncio.ensure_future(gate.passage()) for _ in range(3)]
    await wait_all_tasks_blocked()
    assert 3 == gate.waiting
    gate.release(4)  # three waiting, one permit banked
    await asyncio.gather(*waiters)
    assert gate.try_pass()
    assert not gate.try_pass()
    gate.release()
    assert gate.is_open and gate.try_pass()
    assert changes


def test_input_key_ignores_key_order() -> None:
    """The submit hash is over canonical JSON, so key order does not matter."""
    assert input_key({"a": 1, "b": [1, 2]}) == input_key({"b": [1, 2], "a": 1})
    assert input_key({"a": 1}) != input_key({"a": 2})


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        ("Make it PIXEL ART", "pixelate"),
        ("pixel-art style", "pixelate"),
        ("black and white please", "grayscale"),
        ("grayscale", "grayscale"),
        ("add a hat", "tint"),
    ],
)
def test_transform_of(prompt: str, kind: str) -> None:
    """The prompt picks the edit."""
    assert kind == transform_of(prompt)


def test_pick_size() -> None:
    """Explicit sizes win; auto follows the aspect ratio; no source means square."""
    assert (1536, 1024) == pick_size("1536x1024", (10, 100))
    assert (1024, 1024) == pick_size("auto", None)
    assert (1024, 1536) == pick_size("auto", (10, 100))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_pad_keeps_images_valid(fmt: str) -> None:
    """Padding reaches the target size exactly and the image still decodes."""
    data = edit(png_bytes(), EditSpec(prompt="x", image_size="1024x1024", output_format=fmt))
    padded = pad(data.data, fmt, 200_000)
    assert 200_000 == len(padded)
    image = Image.open(io.BytesIO(padded))
    image.load()
    assert (1024, 1024) == image.size


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/fal-ai/gpt-image-1/edit-image", ("submit", "fal-ai/gpt-image-1", "")),
        ("POST", "/workflows/o/a/s", ("submit", "workflows/o/a", "")),
        ("GET", "/fal-ai/x/requests/r1/status", ("status", "fal-ai/x", "r1")),
        ("GET", "/fal-ai/x/requests/r1/status/", ("status", "fal-ai/x", "r1")),
        ("GET", "/comfy/o/a/requests/r1/status/stream", ("stream", "comfy/o/a", "r1")),
        ("GET", "/fal-ai/x/requests/r1", ("result", "fal-ai/x", "r1")),
        ("GET", "/fal-ai/x/requests/r1/response", ("result", "fal-ai/x", "r1")),
        ("PUT", "/fal-ai/x/requests/r1/cancel", ("cancel", "fal-ai/x", "r1")),
        ("POST", "/storage/auth/token", ("storage", "", "")),
    ],
)
def test_classify(method: str, path: str, expected: tuple[str, str, str]) -> None:
    """Paths map to routes, app roots and request ids as fal lays them out."""
    route = classify(method, path)
    assert route is not None
    assert expected == (route.name, route.app_root, route.request_id)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/"),
        ("POST", "/single"),
        ("POST", "/workflows/o"),
        ("GET", "/fal-ai/x"),
        ("GET", "/fal-ai/x/requests/r1/other"),
        ("PUT", "/fal-ai/x/requests/r1/status"),
        ("DELETE", "/fal-ai/x/requests/r1"),
    ],
)
def test_classify_rejects(method: str, path: str) -> None:
    """Anything else is a 404."""
    assert classify(method, path) is None
