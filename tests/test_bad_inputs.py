"""Bad inputs, table-driven: each is a typed InputError before any request, and in a batch
only its own item fails.

Two kinds of row: schema violations, refused while the input is built (``EditImageInput`` or
``input_from_dict``, the manifest path); and local files that are not usable images, refused
by ``submit`` while it prepares the upload, still before anything is sent. Every test runs
against an emulator and proves "before any request" with its request counter.

The input size cap is ``Limits(max_input_bytes=...)`` (50 MiB by default); the tests use a
client configured with a small one.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from PIL import Image

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    InputError,
    ItemState,
    Limits,
    input_from_dict,
)
from fal_edit_async.emulator import Emulator

from .conftest import client_for

#: The input size cap the tests configure (the real PNG inputs are far below it).
CAP = 4096
GOOD_URL = "https://example.com/photo.png"


@attrs.frozen
class Case:
    """One bad input: its fields (over a valid base) and the field the error must name."""

    id: str
    field: str
    fields: dict[str, Any] = attrs.field(factory=dict)
    drop: str | None = None  # a required key left out (manifest rows only)

    def mapping(self, image: object = GOOD_URL) -> dict[str, Any]:
        """The input as a manifest row."""
        row: dict[str, Any] = {"prompt": "put it on a white background", "image_urls": [image]}
        row.update(self.fields)
        if self.drop:
            del row[self.drop]
        return row


def case(id: str, field: str, drop: str | None = None, **fields: Any) -> Any:
    """A pytest param for a schema case."""
    return pytest.param(Case(id, field, fields, drop), id=id)


SCHEMA_CASES = [
    # Each enum field with a value it does not have (including a case-changed one).
    case("image_size-2048", "image_size", image_size="2048x2048"),
    case("image_size-int", "image_size", image_size=1024),
    case("background-white", "background", background="white"),
    case("quality-ultra", "quality", quality="ultra"),
    case("input_fidelity-medium", "input_fidelity", input_fidelity="medium"),
    case("output_format-gif", "output_format", output_format="gif"),
    case("output_format-PNG", "output_format", output_format="PNG"),
    # num_images: out of range, or not an integer.
    case("num_images-0", "num_images", num_images=0),
    case("num_images-5", "num_images", num_images=5),
    case("num_images-true", "num_images", num_images=True),
    case("num_images-str", "num_images", num_images="2"),
    case("num_images-float", "num_images", num_images=2.0),
    case("num_images-none", "num_images", num_images=None),
    case("sync_mode-str", "sync_mode", sync_mode="yes"),
    # The prompt: empty, blank, or not a string.
    case("prompt-empty", "prompt", prompt=""),
    case("prompt-blank", "prompt", prompt="  \n\t"),
    case("prompt-none", "prompt", prompt=None),
    case("prompt-int", "prompt", prompt=42),
    case("prompt-missing", "prompt", drop="prompt"),
    # No images, or image_urls that is not a list of images.
    case("image_urls-empty", "image_urls", image_urls=[]),
    case("image_urls-missing", "image_urls", drop="image_urls"),
    case("image_urls-none", "image_urls", image_urls=None),
    case("image_urls-bare-string", "image_urls", image_urls=GOOD_URL),
    case("image_urls-item-none", "image_urls[0]", image_urls=[None]),
    case("image_urls-item-int", "image_urls[0]", image_urls=[7]),
    case("image_urls-empty-bytes", "image_urls[0]", image_urls=[b""]),
    # Strings that are not http(s) URLs or data: URIs.
    case("url-words", "image_urls[0]", image_urls=["not a url"]),
    case("url-empty", "image_urls[0]", image_urls=[""]),
    case("url-ftp", "image_urls[0]", image_urls=["ftp://example.com/a.png"]),
    case("url-file", "image_urls[0]", image_urls=["file:///etc/passwd"]),
    case("url-path-string", "image_urls[0]", image_urls=["/tmp/photo.png"]),
    case("url-no-host", "image_urls[0]", image_urls=["https://"]),
    case("url-space", "image_urls[0]", image_urls=["https://exa mple.com/a.png"]),
    case("url-javascript", "image_urls[0]", image_urls=["javascript:alert(1)"]),
    case("url-data-no-comma", "image_urls[0]", image_urls=["data:image/png;base64"]),
    case("url-second-bad", "image_urls[1]", image_urls=[GOOD_URL, "nope"]),
    # A misspelt option would be paid for with the wrong settings (manifest rows only).
    case("unknown-field", "qualty", qualty="low"),
]


def noise_png(size: int) -> bytes:
    """A real PNG of random pixels, so it does not compress below ``size`` bytes."""
    rng = random.Random(size)
    side = int(size**0.5) + 8
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    assert len(data) > size
    return data


def gif_bytes() -> bytes:
    """A real GIF: an image, but not a format the model accepts."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


#: Local files that are not usable images: name -> how to make one under ``tmp``.
FILE_CASES: dict[str, Callable[[Path], Path]] = {
    "missing-file": lambda tmp: tmp / "nowhere.png",
    "directory": lambda tmp: _mkdir(tmp / "folder.png"),
    # Unreadable even for root: a path that goes through a regular file.
    "not-a-directory": lambda tmp: _write(tmp / "plain.png", b"x") / "inner.png",
    "fifo": lambda tmp: _mkfifo(tmp / "pipe.png"),
    "text-file": lambda tmp: _write(tmp / "notes.png", b"this is not an image\n"),
    "gif-file": lambda tmp: _write(tmp / "anim.png", gif_bytes()),
    "empty-file": lambda tmp: _write(tmp / "empty.png", b""),
    "over-the-cap": lambda tmp: _write(tmp / "huge.png", noise_png(CAP)),
}
#: Raw bytes that are not usable images (empty bytes are refused while building, above).
BYTES_CASES: dict[str, bytes] = {
    "text-bytes": b"GIF? no. PNG? no. just text",
    "gif-bytes": gif_bytes(),
    "bytes-over-the-cap": noise_png(CAP),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _mkfifo(path: Path) -> Path:
    os.mkfifo(path)  # opening it would block for ever: it must be refused by its type
    return path


@pytest.fixture
async def capped(emulator: Emulator) -> AsyncIterator[AsyncClient]:
    """A client whose input size cap is CAP, set as users set it: through Limits."""
    async with client_for(emulator, limits=Limits(max_input_bytes=CAP)) as client:
        yield client


@pytest.mark.parametrize("bad", SCHEMA_CASES)
def test_schema_violation_names_its_field(bad: Case) -> None:
    """A manifest row with a schema violation is an InputError naming the bad field."""
    with pytest.raises(InputError) as caught:
        input_from_dict(bad.mapping())
    assert bad.field == caught.value.field


@pytest.mark.parametrize("bad", [p for p in SCHEMA_CASES if p.values[0].field != "qualty"])
async def test_schema_violation_never_reaches_fal(
    emulator: Emulator, client: AsyncClient, bad: Case
) -> None:
    """Building the input for an edit fails with InputError, and the emulator sees nothing."""
    if bad.drop:
        with pytest.raises(TypeError):  # a required keyword missing is a programming error
            EditImageInput(**bad.mapping())
    else:
        with pytest.raises(InputError) as caught:
            await client.edit(EditImageInput(**bad.mapping()))
        assert bad.field == caught.value.field
    assert 0 == emulator.counters.requests_total


@pytest.mark.parametrize("name", sorted(FILE_CASES) + sorted(BYTES_CASES))
async def test_unusable_image_refused_before_any_request(
    emulator: Emulator, capped: AsyncClient, tmp_path: Path, name: str
) -> None:
    """A missing, unreadable, non-image, empty or oversized image fails submit, sending nothing."""
    source = FILE_CASES[name](tmp_path) if name in FILE_CASES else BYTES_CASES[name]
    edit = EditImageInput(prompt="put it on white", image_urls=[source])

    with pytest.raises(InputError) as caught:
        await capped.edit(edit)

    assert "image_urls[0]" == caught.value.field
    assert 0 == emulator.counters.requests_total


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_file_without_read_permission(
    emulator: Emulator, client: AsyncClient, tmp_path: Path, png_bytes: bytes
) -> None:
    """A file the user may not read is an InputError before any request."""
    path = _write(tmp_path / "secret.png", png_bytes)
    path.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        await client.edit(EditImageInput(prompt="x", image_urls=[path]))
    assert 0 == emulator.counters.requests_total


async def test_in_a_batch_only_the_bad_items_fail(
    emulator: Emulator, capped: AsyncClient, tmp_path: Path, png_bytes: bytes
) -> None:
    """Every bad row and file in one batch fails alone; the good ones complete and download."""
    good = _write(tmp_path / "good.png", png_bytes)
    rows: list[Any] = [(f"row:{p.values[0].id}", p.values[0].mapping()) for p in SCHEMA_CASES]
    rows += [
        (f"file:{name}", {"prompt": "white background", "image_urls": [make(tmp_path)]})
        for name, make in FILE_CASES.items()
    ]
    rows += [
        (f"bytes:{name}", EditImageInput(prompt="white background", image_urls=[data]))
        for name, data in BYTES_CASES.items()
    ]
    rows += [("good:path", {"prompt": "white background", "image_urls": [good]})]
    rows += [("good:input", EditImageInput(prompt="studio light", image_urls=[good]))]
    out = tmp_path / "out"

    async with capped.edit_many(rows, download_to=out) as batch:
        results = {r.key: r for r in [r async for r in batch]}

    assert len(rows) == len(results)
    for key, result in results.items():
        if key.startswith("good:"):
            assert result.ok, result.error
        else:
            assert ItemState.FAILED == result.state, key
            assert isinstance(result.error, InputError), key
            assert (None, 0) == (result.request_id, result.attempts), key
    assert 2 == emulator.counters.submits == len(emulator.counters.submits_by_input)
    assert 2 == len(list(out.iterdir()))


async def test_good_file_is_uploaded_even_with_inline_threshold_zero(
    emulator: Emulator, tmp_path: Path, png_bytes: bytes
) -> None:
    """With inline_bytes=0 (upload everything) a real PNG is uploaded, not refused."""
    path = _write(tmp_path / "photo.png", png_bytes)

    async with client_for(emulator, limits=Limits(inline_bytes=0)) as client:
        output = await client.edit(EditImageInput(prompt="white background", image_urls=[path]))

    assert 1 == len(output.images)
    assert 1 == emulator.counters.upload_puts
