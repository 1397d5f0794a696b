"""The one cattrs converter that owns the wire format, and the few functions that use it.

Models know nothing about JSON. This module maps wire names (``queue_position``), parses ISO
timestamps, dispatches status payloads on their ``status`` tag (unknown tags become
:class:`UnknownStatus` instead of an error, so a new server status never breaks an old client),
and turns any structuring failure into a :class:`ProtocolError` that names the bad field's path.
Server payloads are parsed tolerantly (unknown keys ignored); :func:`make_converter` with
``strict=True`` forbids them, which tests use against our own emulator to catch drift.

What only informs (log lines, metrics, the queue position) is read leniently, as fal-client
reads it (logs untyped, ``metrics`` with a default): a log line with ``message: null`` or a
numeric timestamp, ``metrics: null``, or IN_QUEUE without ``queue_position`` is kept as well
as it can be, never a :class:`ProtocolError` that would abort a paid job.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._exceptions import InputError, ProtocolError
from ._files import sniff_image_format
from ._models import (
    Completed,
    EditImageInput,
    InProgress,
    JobStatus,
    LogEntry,
    Queued,
    UnknownStatus,
)

__all__ = [
    "STATUS_TAGS",
    "as_input",
    "converter",
    "from_dict",
    "input_from_dict",
    "input_to_wire",
    "make_converter",
    "parse",
    "parse_status",
    "to_dict",
    "to_wire",
]

T = TypeVar("T")

#: The ``status`` value that tags each known status class on the wire.
STATUS_TAGS: Mapping[type, str] = {
    Queued: "IN_QUEUE",
    InProgress: "IN_PROGRESS",
    Completed: "COMPLETED",
    UnknownStatus: "",  # never matched: the default for tags we do not know
}


def _parse_datetime(value: Any, _: type) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 string, got {value!r}")
    # Python 3.11's fromisoformat reads a trailing "Z"; fal sends it.
    return datetime.fromisoformat(value)


def _lenient_datetime(value: Any) -> datetime | None:
    """A log timestamp: ISO 8601, or Unix seconds (milliseconds when that large); else None."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            seconds = value / 1000 if abs(value) > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            return datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _log_entry_hook(conv: cattrs.Converter) -> Any:
    """One log line, whatever its shape: a line is information, never a reason to fail (a
    strict converter still reports unknown keys, which is how tests catch drift)."""
    text = override(struct_hook=lambda v, _: _text(v))
    fields: Any = make_dict_structure_fn(
        LogEntry,
        conv,
        message=override(struct_hook=lambda v, _: _text(v) or ""),
        level=text,
        source=text,
        timestamp=override(struct_hook=lambda v, _: _lenient_datetime(v)),
    )

    def hook(value: Any, cls: type) -> LogEntry:
        if not isinstance(value, Mapping):
            return LogEntry(message=_text(value) or "")
        if "message" not in value:
            value = {**value, "message": ""}
        return fields(value, cls)  # type: ignore[no-any-return]

    return hook


def _metrics(value: Any, _: type) -> Mapping[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _position(value: Any, _: type) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


def _format_datetime(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _strict_int(value: Any, _: type) -> int:
    # cattrs would int() anything: "3" or True is not what fal sends, so it is a drift to report.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _unknown_status(payload: Any, _: type) -> UnknownStatus:
    status = payload.get("status") if isinstance(payload, Mapping) else None
    if not isinstance(status, str):
        raise ValueError(f"a status payload needs a string 'status', got {payload!r}")
    return UnknownStatus(status=status, payload=dict(payload))


#: Keys every status payload may carry that the models do not keep (the tag and the URLs,
#: which the handle already has); dropped before structuring so strict mode sees only drift.
_STATUS_ENVELOPE = ("status", "response_url", "status_url", "cancel_url")
#: Attribute names that differ from their wire names, for error paths users can match.
_RENAMES: Mapping[type, Mapping[str, str]] = {Queued: {"position": "queue_position"}}


def make_converter(*, strict: bool = False) -> cattrs.Converter:
    """Build a converter configured for fal's wire format.

    Args:
        strict: forbid unknown keys in server payloads (for tests against our emulator).
    """
    conv = cattrs.Converter(forbid_extra_keys=strict)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(datetime, _parse_datetime)
    conv.register_unstructure_hook(datetime, _format_datetime)
    # Journal rows (DownloadedFile) hold paths: plain strings on the wire.
    conv.register_structure_hook(Path, lambda value, _: Path(_strict_str(value, str)))
    conv.register_unstructure_hook(Path, str)
    # StrEnum members are str already; send their plain value, not the member.
    conv.register_unstructure_hook(StrEnum, lambda member: member.value)

    conv.register_structure_hook(LogEntry, _log_entry_hook(conv))

    def logs(value: Any, _: type) -> tuple[LogEntry, ...]:
        # fal sends "logs": null when logs were not asked for; anything else not a list is
        # odd, and dropped rather than refused.
        if not isinstance(value, list | tuple):
            return ()
        return conv.structure(value, tuple[LogEntry, ...])

    def info(value: Any, _: type) -> str | None:
        # A status's error only informs (the result endpoint has the verdict): an object
        # where a string was expected is read as text, never a reason the job cannot settle.
        return _text(value)

    lenient = {
        "logs": logs,
        "metrics": _metrics,
        "position": _position,
        "error": info,
        "error_type": info,
    }
    tag_to_class: dict[str, type] = {}
    for cls, tag in STATUS_TAGS.items():
        if cls is UnknownStatus:
            continue
        tag_to_class[tag] = cls
        fields = {a.name for a in attrs.fields(cls)}
        overrides = {a: override(rename=w) for a, w in _RENAMES.get(cls, {}).items()}
        for name, hook in lenient.items():
            if name in fields:
                overrides[name] = override(rename=_RENAMES.get(cls, {}).get(name), struct_hook=hook)
        structure: Any = make_dict_structure_fn(cls, conv, **overrides)  # type: ignore[arg-type]
        unstructure: Any = make_dict_unstructure_fn(cls, conv, **overrides)  # type: ignore[arg-type]
        conv.register_structure_hook(cls, _without_envelope(structure))
        conv.register_unstructure_hook(cls, _with_tag(unstructure, tag))
    conv.register_structure_hook(UnknownStatus, _unknown_status)
    conv.register_unstructure_hook(UnknownStatus, lambda v: {**v.payload, "status": v.status})

    def status(payload: Any, _: type) -> JobStatus:
        tag = payload.get("status") if isinstance(payload, Mapping) else None
        return conv.structure(payload, tag_to_class.get(tag, UnknownStatus))  # type: ignore[arg-type]

    conv.register_structure_hook_func(lambda t: t == JobStatus, status)
    conv.register_unstructure_hook_func(
        lambda t: t == JobStatus, lambda v: conv.unstructure(v, unstructure_as=type(v))
    )
    return conv


def _without_envelope(structure: Any) -> Any:
    def hook(payload: Any, cls: type) -> Any:
        if isinstance(payload, Mapping):
            payload = {k: v for k, v in payload.items() if k not in _STATUS_ENVELOPE}
        return structure(payload, cls)

    return hook


def _with_tag(unstructure: Any, tag: str) -> Any:
    return lambda value: {"status": tag, **unstructure(value)}


converter = make_converter()


def parse(payload: Any, cls: type[T], *, conv: cattrs.Converter | None = None) -> T:
    """Structure a server payload into ``cls``, or raise :class:`ProtocolError` with paths."""
    try:
        return (conv or converter).structure(payload, cls)
    except cattrs.BaseValidationError as exc:
        details = [_wire_path(d) for d in cattrs.transform_error(exc, path="$")]
        raise ProtocolError(
            f"unexpected {_name(cls)} payload", details=details, payload=payload
        ) from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProtocolError(
            f"unexpected {_name(cls)} payload", details=[str(exc)], payload=payload
        ) from exc


def _wire_path(detail: str) -> str:
    for renames in _RENAMES.values():
        for attr, wire in renames.items():
            detail = detail.replace(f"$.{attr}", f"$.{wire}")
    return detail


def _name(cls: Any) -> str:
    return getattr(cls, "__name__", "status")


def parse_status(payload: Any, *, conv: cattrs.Converter | None = None) -> JobStatus:
    """Structure one status payload (polled or streamed) into its status class."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("status"), str):
        raise ProtocolError(
            "unexpected status payload",
            details=["$.status: missing or not a string"],
            payload=payload,
        )
    return parse(payload, JobStatus, conv=conv)  # type: ignore[arg-type]


def to_wire(value: Any) -> Any:
    """Unstructure any model to plain JSON-ready data."""
    return converter.unstructure(value)


def input_to_wire(value: EditImageInput) -> dict[str, Any]:
    """The JSON body for a submit; every image must already be a URL or data URI."""
    for i, url in enumerate(value.image_urls):
        if not isinstance(url, str):
            raise InputError(f"image_urls[{i}]", url, "a URL; upload local files before submit")
    return {
        a.name: converter.unstructure(getattr(value, a.name)) for a in attrs.fields(type(value))
    }


def input_from_dict(data: Mapping[str, Any]) -> EditImageInput:
    """Build an input from a JSON-like mapping (a manifest line, a journal row).

    Unknown keys are an :class:`InputError`, because a misspelt option silently ignored would
    be paid for with the wrong settings.
    """
    if not isinstance(data, Mapping):
        raise InputError("input", data, "a JSON object")
    known = {a.name for a in attrs.fields(EditImageInput)}
    for key in data:
        if key not in known:
            raise InputError(
                str(key), data[key], "no such field; known: " + ", ".join(sorted(known))
            )
    for key in ("prompt", "image_urls"):
        if key not in data:
            raise InputError(key, None, "a value (the field is required)")
    return EditImageInput(**data)


def as_input(value: EditImageInput | Mapping[str, Any]) -> EditImageInput:
    """An :class:`EditImageInput` as is, or one built from its JSON mapping (fal-client's
    ``{"prompt": ..., "image_urls": [...]}``), checked by :func:`input_from_dict`; anything
    else is an :class:`InputError`. Nothing is sent before this passes."""
    if isinstance(value, EditImageInput):
        return value
    if isinstance(value, Mapping):
        return input_from_dict(value)
    raise InputError("input", type(value).__name__, "an EditImageInput or a mapping of its fields")


def _plain_source(source: Any) -> str:
    """An image source as a string: URLs as they are, a path as text, bytes as a data URI."""
    if isinstance(source, str):
        return source
    if isinstance(source, bytes):
        kind = sniff_image_format(source[:12])
        mime = f"image/{kind}" if kind else "application/octet-stream"
        return f"data:{mime};base64,{base64.b64encode(source).decode('ascii')}"
    return str(os.fspath(source))


def to_dict(value: Any) -> dict[str, Any]:
    """A model as plain JSON-ready data (what ``Model.to_dict()`` returns)."""
    if isinstance(value, EditImageInput):
        data = {
            a.name: converter.unstructure(getattr(value, a.name))
            for a in attrs.fields(EditImageInput)
        }
        data["image_urls"] = [_plain_source(u) for u in value.image_urls]
        return data
    data = converter.unstructure(value)
    if not isinstance(data, dict):
        raise TypeError(f"to_dict() takes a model, not {type(value).__name__}")
    return data


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """A model from its JSON mapping (what ``Model.from_dict()`` does).

    An input is checked as :func:`input_from_dict` checks it; a status must carry its own
    tag (or none); anything else is parsed as a server payload would be.
    """
    if cls is EditImageInput:
        return input_from_dict(data)  # type: ignore[return-value]
    tag = STATUS_TAGS.get(cls)
    if tag and isinstance(data, Mapping) and data.get("status", tag) != tag:
        raise ProtocolError(
            f"unexpected {_name(cls)} payload",
            details=[f"$.status: expected {tag!r}, got {data.get('status')!r}"],
            payload=data,
        )
    return parse(data, cls)
