"""Value types for the edit endpoint and the fal queue: frozen attrs classes, no I/O, no JSON.

The wire mapping (names, datetimes, the ``status`` tag) lives in ``_converter``; validation of
user input happens here, in attrs converters and validators, so a bad ``EditImageInput`` can
never be built and therefore never sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, Literal, Self, TypeAlias, TypedDict, TypeVar
from urllib.parse import urlsplit

import attrs

from ._exceptions import InputError

__all__ = [
    "Background",
    "CancelOutcome",
    "Completed",
    "DownloadedFile",
    "EditImageInput",
    "EditImageOutput",
    "ImageFile",
    "ImageSize",
    "ImageSource",
    "InProgress",
    "InputFidelity",
    "JobStatus",
    "JobUrls",
    "LogEntry",
    "OutputFormat",
    "Quality",
    "Queued",
    "SubmitOptions",
    "SubmitReceipt",
    "UnknownStatus",
]


class _Wire:
    """``to_dict()`` and ``from_dict()`` for a model, through the one converter (imported
    when called: the converter imports the models)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """This value as plain JSON-ready data, with fal's wire names (``json.dumps`` takes it).

        A local file in an input becomes its path as a string, and bytes a ``data:`` URI.
        """
        from ._converter import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build one from its JSON mapping (as :meth:`to_dict` or fal makes it).

        Raises:
            InputError: for an :class:`EditImageInput` (unknown keys included).
            ProtocolError: for the other models, naming the path of the bad field.
        """
        from ._converter import from_dict

        return from_dict(cls, data)


class ImageSize(StrEnum):
    """Output size: ``auto`` lets the model choose."""

    AUTO = "auto"
    SQUARE = "1024x1024"
    LANDSCAPE = "1536x1024"
    PORTRAIT = "1024x1536"


class Background(StrEnum):
    """Output background; ``transparent`` needs png or webp output."""

    AUTO = "auto"
    TRANSPARENT = "transparent"
    OPAQUE = "opaque"


class Quality(StrEnum):
    """Rendering quality, which sets the price per output image."""

    AUTO = "auto"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class InputFidelity(StrEnum):
    """How closely the model follows the input images (``high`` costs more image tokens)."""

    LOW = "low"
    HIGH = "high"


class OutputFormat(StrEnum):
    """Encoding of the output images."""

    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"


class CancelOutcome(StrEnum):
    """What fal answered to a cancel request."""

    REQUESTED = "CANCELLATION_REQUESTED"
    OK = "OK"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


#: What ``image_urls`` accepts: an http(s) URL or ``data:`` URI as a string, or a local file
#: (a path) or raw bytes, which the client uploads or inlines before submitting.
ImageSource: TypeAlias = str | os.PathLike[str] | bytes

_E = TypeVar("_E", bound=StrEnum)


def _enum(cls: type[_E], field: str, value: object) -> _E:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value)
        except ValueError:
            pass
    raise InputError(field, value, "one of " + " | ".join(m.value for m in cls))


# Named converters, one per enum field: the attrs mypy plugin reads only named functions.
def _image_size(value: object) -> ImageSize:
    return _enum(ImageSize, "image_size", value)


def _background(value: object) -> Background:
    return _enum(Background, "background", value)


def _quality(value: object) -> Quality:
    return _enum(Quality, "quality", value)


def _input_fidelity(value: object) -> InputFidelity:
    return _enum(InputFidelity, "input_fidelity", value)


def _output_format(value: object) -> OutputFormat:
    return _enum(OutputFormat, "output_format", value)


def _prompt(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError("prompt", value, "a non-empty string")
    return value


def is_remote_url(value: str) -> bool:
    """True for an http(s) URL with a host, or a ``data:`` URI with a payload."""
    if value.startswith("data:"):
        return "," in value
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and " " not in value


def _image_source(index: int, value: object) -> ImageSource:
    field = f"image_urls[{index}]"
    if isinstance(value, str):
        if is_remote_url(value):
            return value
        raise InputError(field, value, "an http(s) URL or a data: URI (pass a Path for a file)")
    if isinstance(value, PurePath | os.PathLike):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        if not value:
            raise InputError(field, b"", "non-empty image bytes")
        return bytes(value)
    raise InputError(field, value, "a URL string, a data: URI, a Path or bytes")


def _image_urls(value: object) -> tuple[ImageSource, ...]:
    if isinstance(value, str | bytes | os.PathLike) or not isinstance(value, Iterable):
        raise InputError("image_urls", value, "a list of one or more images")
    items = tuple(_image_source(i, v) for i, v in enumerate(value))
    if not items:
        raise InputError("image_urls", [], "a list of one or more images")
    return items


def _num_images(value: object) -> int:
    # bool is an int subclass, and ``True`` meaning 1 image is a bug waiting to happen.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
        raise InputError("num_images", value, "an integer from 1 to 4")
    return value


def _sync_mode(value: object) -> bool:
    if not isinstance(value, bool):
        raise InputError("sync_mode", value, "true or false")
    return value


@attrs.frozen(kw_only=True)
class EditImageInput(_Wire):
    """The input of ``fal-ai/gpt-image-1/edit-image``, validated when built.

    Every field is checked as it is set; a bad value raises :class:`InputError` naming the
    field, the value and what is allowed, before anything is sent or paid for. Enum fields
    accept their string values (``quality="low"``).

    Usage::

        EditImageInput(prompt="Make it pixel art", image_urls=["https://.../cat.png"])
    """

    prompt: str = attrs.field(converter=_prompt)
    image_urls: tuple[ImageSource, ...] = attrs.field(converter=_image_urls)
    image_size: ImageSize = attrs.field(default=ImageSize.AUTO, converter=_image_size)
    background: Background = attrs.field(default=Background.AUTO, converter=_background)
    quality: Quality = attrs.field(default=Quality.AUTO, converter=_quality)
    input_fidelity: InputFidelity = attrs.field(
        default=InputFidelity.HIGH, converter=_input_fidelity
    )
    num_images: int = attrs.field(default=1, converter=_num_images)
    output_format: OutputFormat = attrs.field(default=OutputFormat.PNG, converter=_output_format)
    sync_mode: bool = attrs.field(default=False, converter=_sync_mode)

    @property
    def is_resolved(self) -> bool:
        """True when every image is already a URL or data URI (nothing left to upload)."""
        return all(isinstance(u, str) for u in self.image_urls)


@attrs.frozen(kw_only=True)
class ImageFile(_Wire):
    """One output image as fal describes it; ``url`` may be a ``data:`` URI in sync mode."""

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    width: int | None = None
    height: int | None = None


@attrs.frozen(kw_only=True)
class EditImageOutput(_Wire):
    """The output of the edit endpoint: the edited images."""

    images: tuple[ImageFile, ...]


@attrs.frozen(kw_only=True)
class SubmitReceipt(_Wire):
    """fal's answer to a submit: the request id and the URLs to follow it."""

    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    status: str | None = None


@attrs.frozen(kw_only=True)
class JobUrls(_Wire):
    """Where one job's status, stream, result and cancel live."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    @property
    def stream_url(self) -> str:
        """The server-sent events status stream."""
        return self.status_url.rstrip("/") + "/stream"


@attrs.frozen(kw_only=True)
class DownloadedFile(_Wire):
    """One image written to disk and verified.

    ``content_type`` is the format the bytes really are, not what the server claimed;
    ``sha256`` is the hex digest of the file, or None when downloaded without a checksum.
    """

    path: Path
    size: int
    sha256: str | None
    content_type: str


@attrs.frozen(kw_only=True)
class LogEntry(_Wire):
    """One log line the model emitted while running."""

    message: str
    level: str | None = None
    source: str | None = None
    timestamp: datetime | None = None


@attrs.frozen(kw_only=True)
class Queued(_Wire):
    """IN_QUEUE: waiting for a runner; ``position`` requests are ahead (0-based), None when
    fal did not say (it sends ``queue_position: null``, or none at all, at times)."""

    position: int | None = None
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class InProgress(_Wire):
    """IN_PROGRESS: a runner is working on the job; ``logs`` as the server sent them."""

    logs: tuple[LogEntry, ...] = ()
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class Completed(_Wire):
    """COMPLETED: the job ended; with ``error`` set it failed and the result holds why."""

    logs: tuple[LogEntry, ...] = ()
    metrics: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    error: str | None = None
    error_type: str | None = None
    request_id: str | None = None

    @property
    def failed(self) -> bool:
        """True when the job ended with an error rather than a result."""
        return self.error is not None or self.error_type is not None


@attrs.frozen(kw_only=True)
class UnknownStatus(_Wire):
    """A status value this client does not know yet; kept rather than refused."""

    status: str
    payload: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


#: Any status update: the tagged union fal sends on ``status``.
JobStatus: TypeAlias = Queued | InProgress | Completed | UnknownStatus


class SubmitOptions(TypedDict, total=False):
    """The options of a submit, accepted by ``submit``, ``edit`` and ``edit_many``.

    A misspelt option is a type error (``**options: Unpack[SubmitOptions]``), and an
    unknown one a ``TypeError`` at the call, before anything is sent.
    """

    #: The fal endpoint id (default ``fal-ai/gpt-image-1/edit-image``).
    endpoint: str
    #: A URL fal POSTs the result to when the job ends.
    webhook_url: str | None
    #: The queue priority.
    priority: Literal["normal", "low"] | None
    #: A runner routing hint.
    hint: str | None
    #: Seconds (above 1) the job may wait to start before fal gives up on it, unbilled.
    start_timeout: float | None
    #: Extra request headers (never ``Authorization``).
    headers: Mapping[str, str] | None


# Resolve the string annotations now, in this module: the package re-homes these classes to
# ``fal_edit_async`` for their reprs, whose namespace lacks names like ``Path``.
for _cls in (EditImageInput, ImageFile, EditImageOutput, SubmitReceipt, JobUrls, DownloadedFile):
    attrs.resolve_types(_cls)
del _cls
