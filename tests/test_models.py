"""EditImageInput validation, the enums' wire values, and the plain value types."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest

from fal_edit_async import (
    Background,
    CancelOutcome,
    Completed,
    EditImageInput,
    EditImageOutput,
    FalEditError,
    ImageFile,
    ImageSize,
    InProgress,
    InputError,
    InputFidelity,
    OutputFormat,
    Quality,
    Queued,
    UnknownStatus,
)
from fal_edit_async._models import is_remote_url

URL = "https://example.com/cat.png"
DATA_URI = "data:image/png;base64,iVBORw0KGgo="
REQUIRED: dict[str, Any] = {"prompt": "Make this pixel-art style.", "image_urls": [URL]}

NOT_A_LIST = "a list of one or more images"
NOT_A_URL = "an http(s) URL or a data: URI (pass a Path for a file)"
NOT_AN_IMAGE = "a URL string, a data: URI, a Path or bytes"
NOT_A_PROMPT = "a non-empty string"
NOT_A_COUNT = "an integer from 1 to 4"
NOT_A_BOOL = "true or false"

_SAME: Any = object()


def build(**fields: Any) -> EditImageInput:
    return EditImageInput(**{**REQUIRED, **fields})


def bad(
    field: str, value: object, allowed: str, *, id: str, at: str | None = None, shown: Any = _SAME
) -> Any:
    """One invalid-input case: set ``field`` to ``value``; the error names ``at`` and ``shown``."""
    return pytest.param(
        field, value, at or field, value if shown is _SAME else shown, allowed, id=id
    )


def enum_cases(field: str, cls: type[StrEnum], other_member: object) -> list[Any]:
    allowed = "one of " + " | ".join(m.value for m in cls)
    return [
        bad(field, "no-such-value", allowed, id=f"{field}-unknown-value"),
        bad(field, next(iter(cls)).value.upper(), allowed, id=f"{field}-wrong-case"),
        bad(field, 1, allowed, id=f"{field}-int"),
        bad(field, None, allowed, id=f"{field}-none"),
        bad(field, other_member, allowed, id=f"{field}-member-of-another-enum"),
    ]


INVALID = [
    bad("prompt", "", NOT_A_PROMPT, id="prompt-empty"),
    bad("prompt", "   \n\t", NOT_A_PROMPT, id="prompt-whitespace"),
    bad("prompt", None, NOT_A_PROMPT, id="prompt-none"),
    bad("prompt", 42, NOT_A_PROMPT, id="prompt-int"),
    bad("prompt", b"make it pixel art", NOT_A_PROMPT, id="prompt-bytes"),
    bad("prompt", ["make it pixel art"], NOT_A_PROMPT, id="prompt-list"),
    bad("image_urls", [], NOT_A_LIST, id="image_urls-empty-list"),
    bad("image_urls", (), NOT_A_LIST, shown=[], id="image_urls-empty-tuple"),
    bad("image_urls", URL, NOT_A_LIST, id="image_urls-plain-string"),
    bad("image_urls", b"\x89PNG", NOT_A_LIST, id="image_urls-plain-bytes"),
    bad("image_urls", Path("cat.png"), NOT_A_LIST, id="image_urls-plain-path"),
    bad("image_urls", None, NOT_A_LIST, id="image_urls-none"),
    bad("image_urls", 42, NOT_A_LIST, id="image_urls-int"),
    bad("image_urls", ["not a url"], NOT_A_URL, at="image_urls[0]", shown="not a url",
        id="image_urls-non-url-string"),
    bad("image_urls", ["cat.png"], NOT_A_URL, at="image_urls[0]", shown="cat.png",
        id="image_urls-path-as-string"),
    bad("image_urls", ["ftp://example.com/cat.png"], NOT_A_URL, at="image_urls[0]",
        shown="ftp://example.com/cat.png", id="image_urls-ftp"),
    bad("image_urls", ["https:///cat.png"], NOT_A_URL, at="image_urls[0]",
        shown="https:///cat.png", id="image_urls-no-host"),
    bad("image_urls", ["http://"], NOT_A_URL, at="image_urls[0]", shown="http://",
        id="image_urls-scheme-only"),
    bad("image_urls", ["https://example.com/a cat.png"], NOT_A_URL, at="image_urls[0]",
        shown="https://example.com/a cat.png", id="image_urls-space"),
    bad("image_urls", ["data:image/png;base64"], NOT_A_URL, at="image_urls[0]",
        shown="data:image/png;base64", id="image_urls-data-uri-without-payload"),
    bad("image_urls", [""], NOT_A_URL, at="image_urls[0]", shown="", id="image_urls-empty-string"),
    bad("image_urls", [URL, "nope"], NOT_A_URL, at="image_urls[1]", shown="nope",
        id="image_urls-second-item-bad"),
    bad("image_urls", [b""], "non-empty image bytes", at="image_urls[0]", shown=b"",
        id="image_urls-empty-bytes"),
    bad("image_urls", [bytearray()], "non-empty image bytes", at="image_urls[0]", shown=b"",
        id="image_urls-empty-bytearray"),
    bad("image_urls", [42], NOT_AN_IMAGE, at="image_urls[0]", shown=42, id="image_urls-item-int"),
    bad("image_urls", [None], NOT_AN_IMAGE, at="image_urls[0]", shown=None,
        id="image_urls-item-none"),
    bad("num_images", 0, NOT_A_COUNT, id="num_images-0"),
    bad("num_images", 5, NOT_A_COUNT, id="num_images-5"),
    bad("num_images", -1, NOT_A_COUNT, id="num_images-negative"),
    bad("num_images", True, NOT_A_COUNT, id="num_images-bool-true"),
    bad("num_images", False, NOT_A_COUNT, id="num_images-bool-false"),
    bad("num_images", "2", NOT_A_COUNT, id="num_images-string"),
    bad("num_images", 2.0, NOT_A_COUNT, id="num_images-float"),
    bad("num_images", None, NOT_A_COUNT, id="num_images-none"),
    bad("sync_mode", 1, NOT_A_BOOL, id="sync_mode-int"),
    bad("sync_mode", "true", NOT_A_BOOL, id="sync_mode-string"),
    bad("sync_mode", None, NOT_A_BOOL, id="sync_mode-none"),
    *enum_cases("image_size", ImageSize, Quality.LOW),
    *enum_cases("background", Background, Quality.HIGH),
    *enum_cases("quality", Quality, OutputFormat.PNG),
    *enum_cases("input_fidelity", InputFidelity, Quality.MEDIUM),
    *enum_cases("output_format", OutputFormat, Background.AUTO),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "at", "shown", "allowed"), INVALID)
def test_invalid_input_is_refused_with_field_value_and_allowed(
    field: str, value: object, at: str, shown: object, allowed: str
) -> None:
    """An invalid field value raises InputError naming the field, the value and what is allowed."""
    with pytest.raises(InputError) as caught:
        build(**{field: value})

    assert at == caught.value.field
    assert shown == caught.value.value
    assert type(shown) is type(caught.value.value)
    assert allowed == caught.value.allowed
    assert f"{at}: invalid value {shown!r}; expected {allowed}" == str(caught.value)


def test_input_error_is_a_value_error_and_a_fal_edit_error() -> None:
    """InputError can be caught as ValueError or as the package's base error."""
    with pytest.raises(ValueError) as caught:
        build(num_images=9)

    assert isinstance(caught.value, FalEditError)


def test_long_invalid_values_are_shortened_in_the_message() -> None:
    """A huge invalid value is cut to a short repr in the message but kept whole on the error."""
    huge = "x" * 500

    with pytest.raises(InputError) as caught:
        build(image_urls=[huge])

    assert huge == caught.value.value
    assert huge not in str(caught.value)
    assert len(str(caught.value)) < 200


def test_required_fields_cannot_be_left_out() -> None:
    """prompt and image_urls have no defaults."""
    with pytest.raises(TypeError, match="image_urls"):
        EditImageInput(prompt="p")  # type: ignore[call-arg]


def test_defaults_follow_the_endpoint_schema() -> None:
    """Unset fields take the defaults the endpoint documents."""
    inp = build()

    assert ImageSize.AUTO == inp.image_size
    assert Background.AUTO == inp.background
    assert Quality.AUTO == inp.quality
    assert InputFidelity.HIGH == inp.input_fidelity
    assert 1 == inp.num_images
    assert OutputFormat.PNG == inp.output_format
    assert inp.sync_mode is False


def _enum_values() -> Iterator[Any]:
    for field, cls in [
        ("image_size", ImageSize),
        ("background", Background),
        ("quality", Quality),
        ("input_fidelity", InputFidelity),
        ("output_format", OutputFormat),
    ]:
        for member in cls:
            yield pytest.param(field, member, member, id=f"{field}-{member.value}-member")
            yield pytest.param(field, member.value, member, id=f"{field}-{member.value}-string")


VALID = [
    *_enum_values(),
    pytest.param("prompt", "Make this pixel-art style.", "Make this pixel-art style.", id="prompt"),
    pytest.param("prompt", "  keep my spaces  ", "  keep my spaces  ", id="prompt-untrimmed"),
    pytest.param("prompt", "Mach es 8-bit \u2728", "Mach es 8-bit \u2728", id="prompt-unicode"),
    *(pytest.param("num_images", n, n, id=f"num_images-{n}") for n in range(1, 5)),
    pytest.param("sync_mode", True, True, id="sync_mode-true"),
    pytest.param("sync_mode", False, False, id="sync_mode-false"),
    pytest.param("image_urls", [URL], (URL,), id="image_urls-https"),
    pytest.param("image_urls", ["http://127.0.0.1:8080/a.png"], ("http://127.0.0.1:8080/a.png",),
                 id="image_urls-http-with-port"),
    pytest.param("image_urls", [DATA_URI], (DATA_URI,), id="image_urls-data-uri"),
    pytest.param("image_urls", [Path("cat.png")], (Path("cat.png"),), id="image_urls-path"),
    pytest.param("image_urls", [PurePosixPath("/tmp/cat.png")], (PurePosixPath("/tmp/cat.png"),),
                 id="image_urls-pure-path"),
    pytest.param("image_urls", [b"\x89PNG"], (b"\x89PNG",), id="image_urls-bytes"),
    pytest.param("image_urls", [bytearray(b"\x89PNG")], (b"\x89PNG",), id="image_urls-bytearray"),
    pytest.param("image_urls", [memoryview(b"\x89PNG")], (b"\x89PNG",), id="image_urls-memoryview"),
    pytest.param("image_urls", (URL, DATA_URI), (URL, DATA_URI), id="image_urls-tuple"),
    pytest.param("image_urls", (u for u in [URL]), (URL,), id="image_urls-generator"),
    pytest.param("image_urls", [URL, Path("b.png"), b"c"], (URL, Path("b.png"), b"c"),
                 id="image_urls-mixed-in-order"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "expected"), VALID)
def test_valid_input_is_accepted_and_normalised(
    field: str, value: object, expected: object
) -> None:
    """Each valid spelling of a field is accepted and stored in its normal form."""
    inp = build(**{field: value})

    actual = getattr(inp, field)
    assert expected == actual
    assert type(expected) is type(actual)


def test_bytes_like_images_are_stored_as_bytes() -> None:
    """bytearray and memoryview become immutable bytes, so the input stays hashable."""
    inp = build(image_urls=[bytearray(b"a"), memoryview(b"b")])

    assert all(type(u) is bytes for u in inp.image_urls)
    assert hash(inp) == hash(build(image_urls=[b"a", b"b"]))


def test_input_is_frozen() -> None:
    """A built input cannot be changed in place."""
    inp = build()

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        inp.num_images = 2  # type: ignore[misc]


def test_evolve_validates_again() -> None:
    """attrs.evolve runs the same validation, so an invalid copy cannot be made either."""
    with pytest.raises(InputError, match="num_images"):
        attrs.evolve(build(), num_images=0)


@pytest.mark.parametrize(
    ("image_urls", "expected"),
    [
        pytest.param([URL, DATA_URI], True, id="urls-only"),
        pytest.param([URL, Path("cat.png")], False, id="with-a-path"),
        pytest.param([b"\x89PNG"], False, id="with-bytes"),
    ],
)
def test_is_resolved_when_every_image_is_a_url(image_urls: list[Any], expected: bool) -> None:
    """is_resolved is True only when nothing is left to upload."""
    assert expected == build(image_urls=image_urls).is_resolved


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(URL, True, id="https"),
        pytest.param("HTTP://EXAMPLE.COM/A.PNG", True, id="upper-case-scheme"),
        pytest.param(DATA_URI, True, id="data-uri"),
        pytest.param("data:,", True, id="empty-data-uri"),
        pytest.param("data:image/png", False, id="data-uri-without-comma"),
        pytest.param("ftp://example.com/a.png", False, id="ftp"),
        pytest.param("file:///tmp/a.png", False, id="file"),
        pytest.param("//example.com/a.png", False, id="scheme-relative"),
        pytest.param("http://[::1", False, id="unparseable"),
    ],
)
def test_is_remote_url(value: str, expected: bool) -> None:
    """Only http(s) URLs with a host and data: URIs with a payload count as remote."""
    assert expected == is_remote_url(value)


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        pytest.param(ImageSize, ["auto", "1024x1024", "1536x1024", "1024x1536"], id="ImageSize"),
        pytest.param(Background, ["auto", "transparent", "opaque"], id="Background"),
        pytest.param(Quality, ["auto", "low", "medium", "high"], id="Quality"),
        pytest.param(InputFidelity, ["low", "high"], id="InputFidelity"),
        pytest.param(OutputFormat, ["jpeg", "png", "webp"], id="OutputFormat"),
        pytest.param(
            CancelOutcome,
            ["CANCELLATION_REQUESTED", "OK", "ALREADY_COMPLETED", "NOT_FOUND"],
            id="CancelOutcome",
        ),
    ],
)
def test_enum_values_match_the_wire(cls: type[StrEnum], values: list[str]) -> None:
    """Each enum's values are exactly the strings the protocol uses."""
    assert values == [m.value for m in cls]


def test_output_image_needs_only_a_url() -> None:
    """fal guarantees only ``url`` on an output image; the rest default to None."""
    image = ImageFile(url="https://v3.fal.media/files/x.png")

    assert (None, None, None, None, None) == (
        image.content_type,
        image.file_name,
        image.file_size,
        image.width,
        image.height,
    )
    assert (image,) == EditImageOutput(images=(image,)).images


@pytest.mark.parametrize(
    ("completed", "expected"),
    [
        pytest.param(Completed(), False, id="success"),
        pytest.param(Completed(error="Runner disconnected"), True, id="error"),
        pytest.param(Completed(error_type="runner_disconnected"), True, id="error-type-only"),
    ],
)
def test_completed_failed_when_error_is_set(completed: Completed, expected: bool) -> None:
    """A COMPLETED status counts as failed when it carries an error or an error type."""
    assert expected == completed.failed


def test_status_defaults() -> None:
    """Statuses default to no logs, no metrics and no request id."""
    assert Queued(position=0).request_id is None
    assert () == InProgress().logs
    assert ((), {}, None) == (Completed().logs, Completed().metrics, Completed().request_id)


def test_unknown_status_keeps_its_payload_and_is_hashable() -> None:
    """UnknownStatus keeps the raw payload yet stays hashable (the payload is left out)."""
    status = UnknownStatus(status="PAUSED", payload={"status": "PAUSED", "why": ["x"]})

    assert "PAUSED" == status.payload["status"]
    assert hash(status) == hash(UnknownStatus(status="PAUSED"))
