"""Output images: a visible, deterministic edit of the first input image, made with Pillow.

The "model" pixelates when the prompt asks for pixel art, goes grayscale for "black and white"
or "grayscale", and otherwise tints the image with a colour derived from the prompt. Sizes:
``auto`` follows the input's aspect ratio, picking landscape (1536x1024) above 1.25, portrait
(1024x1536) below 0.8, else square (1024x1024). A transparent background (png and webp only)
keeps the input's alpha, or cuts the image to an ellipse when the input has none.

Every function here blocks; the emulator calls them through ``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import struct
import zlib
from urllib.parse import unquote_to_bytes

import attrs

try:
    from PIL import Image, ImageDraw, ImageOps
except ImportError as exc:  # Pillow comes with the "emulator" extra only
    raise ImportError(
        "fal_edit_async.emulator needs Pillow: pip install 'fal-edit-async[emulator]'",
        name=exc.name,  # "PIL": how a caller tells a missing Pillow from any other import
    ) from exc

__all__ = [
    "CONTENT_TYPES",
    "EXTENSIONS",
    "EditSpec",
    "ImageInputError",
    "Rendered",
    "data_uri",
    "decode_data_uri",
    "edit",
    "pad",
    "pick_size",
    "placeholder",
    "transform_of",
]

SIZES = {"1024x1024": (1024, 1024), "1536x1024": (1536, 1024), "1024x1536": (1024, 1536)}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# Fast settings: the emulator is a test bed, and these are valid files all the same.
_SAVE_OPTIONS: dict[str, dict[str, int]] = {
    "png": {"compress_level": 1},
    "jpeg": {"quality": 85},
    "webp": {"quality": 80, "method": 0},
}
# Refuse inputs beyond this many pixels before decoding (Pillow would only warn).
MAX_INPUT_PIXELS = 40_000_000
_PIXEL_BLOCK = 32
_TINT_STRENGTH = 0.35


class ImageInputError(Exception):
    """An input image could not be read or decoded; the job fails with a 422 on it."""


@attrs.frozen(kw_only=True)
class EditSpec:
    """What to render: the parts of the job input that shape the output."""

    prompt: str
    image_size: str = "auto"
    output_format: str = "png"
    transparent: bool = False
    output_bytes: int | None = None


@attrs.frozen(kw_only=True)
class Rendered:
    """One encoded output image."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    width: int
    height: int
    content_type: str


def transform_of(prompt: str) -> str:
    """Which edit the prompt asks for: ``pixelate``, ``grayscale`` or ``tint``."""
    text = prompt.lower()
    if "pixel art" in text or "pixel-art" in text:
        return "pixelate"
    if "black and white" in text or "grayscale" in text:
        return "grayscale"
    return "tint"


def pick_size(image_size: str, source: tuple[int, int] | None) -> tuple[int, int]:
    """The output size for ``image_size``; ``auto`` follows the source's aspect ratio."""
    if image_size in SIZES:
        return SIZES[image_size]
    if source is None or source[1] == 0:
        return SIZES["1024x1024"]
    ratio = source[0] / source[1]
    if ratio > 1.25:
        return SIZES["1536x1024"]
    if ratio < 0.8:
        return SIZES["1024x1536"]
    return SIZES["1024x1024"]


def edit(source: bytes, spec: EditSpec) -> Rendered:
    """Decode ``source`` and render the edited output image.

    Raises:
        ImageInputError: the bytes are not an image Pillow can decode.
    """
    image = _decode(source)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    size = pick_size(spec.image_size, image.size)
    fitted = ImageOps.fit(image.convert("RGBA"), size, method=Image.Resampling.BILINEAR)
    out = _apply(fitted.convert("RGB"), transform_of(spec.prompt), _tint(spec.prompt))
    if spec.transparent and spec.output_format != "jpeg":
        out.putalpha(fitted.getchannel("A") if has_alpha else _ellipse(size))
    return _encode(out, spec)


def placeholder(spec: EditSpec) -> Rendered:
    """A solid image of the right size and format, for ``fast_images`` benchmarks.

    The colour depends only on the kind of edit, never on the whole prompt, so callers can
    cache the result per kind.
    """
    size = pick_size(spec.image_size, None)
    kind = transform_of(spec.prompt)
    colour = {"pixelate": (40, 160, 90), "grayscale": (128, 128, 128), "tint": (200, 120, 60)}
    out = Image.new("RGB", size, colour[kind])
    if spec.transparent and spec.output_format != "jpeg":
        out.putalpha(_ellipse(size))
    return _encode(out, spec)


def _decode(source: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(source))
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise ImageInputError(f"image too large: {image.width}x{image.height}")
        image.draft("RGB", (1536, 1536))  # JPEG decodes at reduced scale: much faster
        image.load()
    except ImageInputError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data
        raise ImageInputError(f"cannot decode image: {exc}") from exc
    return image


def _tint(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def _apply(image: Image.Image, kind: str, tint: tuple[int, int, int]) -> Image.Image:
    if kind == "pixelate":
        small = (max(1, image.width // _PIXEL_BLOCK), max(1, image.height // _PIXEL_BLOCK))
        nearest = Image.Resampling.NEAREST
        return image.resize(small, nearest).resize(image.size, nearest)
    if kind == "grayscale":
        return ImageOps.grayscale(image).convert("RGB")
    return Image.blend(image, Image.new("RGB", image.size, tint), _TINT_STRENGTH)


@functools.lru_cache(maxsize=8)
def _ellipse(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    w, h = size
    ImageDraw.Draw(mask).ellipse((w // 20, h // 20, w - w // 20, h - h // 20), fill=255)
    return mask


def _encode(image: Image.Image, spec: EditSpec) -> Rendered:
    fmt = spec.output_format
    data = _save(image, fmt)
    target = spec.output_bytes
    if target is not None and target > len(data):
        if fmt == "webp":
            # The XMP chunk makes an extended (VP8X) file, which every decoder accepts.
            data = _save(image, fmt, xmp=b"\0" * max(1, target - len(data) - 30))
        else:
            data = pad(data, fmt, target)
    return Rendered(
        data=data, width=image.width, height=image.height, content_type=CONTENT_TYPES[fmt]
    )


def _save(image: Image.Image, fmt: str, **extra: bytes) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, _PIL_FORMATS[fmt], **_SAVE_OPTIONS[fmt], **extra)
    return buffer.getvalue()


def pad(data: bytes, fmt: str, target: int) -> bytes:
    """Grow an encoded png or jpeg to about ``target`` bytes with ignorable metadata.

    PNG gets a private ancillary chunk (``emUl``) before ``IEND``; JPEG gets comment (COM)
    segments after ``SOI``. Decoders skip both.
    """
    missing = target - len(data)
    if fmt == "png" and missing > 12:
        payload = b"\0" * (missing - 12)
        chunk = struct.pack(">I", len(payload)) + b"emUl" + payload
        chunk += struct.pack(">I", zlib.crc32(b"emUl" + payload))
        return data[:-12] + chunk + data[-12:]
    if fmt == "jpeg" and missing > 4:
        segments = []
        while missing > 4:
            size = min(missing - 4, 65533)
            segments.append(b"\xff\xfe" + struct.pack(">H", size + 2) + b"\0" * size)
            missing -= size + 4
        return data[:2] + b"".join(segments) + data[2:]
    return data


def stamp(data: bytes, fmt: str, mark: bytes) -> bytes:
    """``data`` with ``mark`` (the job's request id and index) in ignorable metadata, so two
    jobs never give the same bytes, as a generative model never does: a PNG ancillary chunk
    (``emId``) before ``IEND``, a JPEG comment after ``SOI``. WebP is left as it is."""
    if fmt == "png":
        chunk = struct.pack(">I", len(mark)) + b"emId" + mark
        chunk += struct.pack(">I", zlib.crc32(b"emId" + mark))
        return data[:-12] + chunk + data[-12:]
    if fmt == "jpeg":
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(mark) + 2) + mark + data[2:]
    return data


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a ``data:`` URI (base64 or percent-encoded).

    Raises:
        ImageInputError: the URI is malformed.
    """
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise ImageInputError("malformed data URI")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ImageInputError(f"bad base64 in data URI: {exc}") from exc
    return unquote_to_bytes(payload)


def data_uri(content_type: str, data: bytes) -> str:
    """A base64 ``data:`` URI for ``data``."""
    return f"data:{content_type};base64," + base64.b64encode(data).decode("ascii")
