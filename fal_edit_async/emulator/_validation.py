"""The emulator's own check of an edit-image input, answering like fal's FastAPI apps do.

This deliberately does not reuse the client's validators: the emulator is an independent judge
of what the client sends, so a bug in one cannot hide the same bug in the other. The rules are
the same: ``prompt`` a non-blank string; ``image_urls`` a non-empty list of http(s) URLs or
``data:`` URIs; the enum fields one of their values; ``num_images`` an integer 1..4 (booleans
refused); ``sync_mode`` a boolean. Unknown fields are ignored, as fal ignores them.

Errors use the pydantic v2 shape fal returns in a 422: ``{"loc": ["body", field, ...],
"msg": ..., "type": ..., "input": ...}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["ENUMS", "field_error", "is_image_url", "validate_input"]

#: The allowed values of each enum field.
ENUMS: dict[str, tuple[str, ...]] = {
    "image_size": ("auto", "1024x1024", "1536x1024", "1024x1536"),
    "background": ("auto", "transparent", "opaque"),
    "quality": ("auto", "low", "medium", "high"),
    "input_fidelity": ("low", "high"),
    "output_format": ("jpeg", "png", "webp"),
}

_MISSING = object()


def field_error(loc: list[str | int], msg: str, kind: str, value: Any = _MISSING) -> dict[str, Any]:
    """One entry of a 422 ``detail`` list.

    Args:
        loc: the path below ``body`` (``["prompt"]``, ``["image_urls", 0]``).
        msg: the human message.
        kind: the pydantic error type (``missing``, ``literal_error``...).
        value: the offending input, when there is one.

    Returns:
        ``{"loc": ["body", *loc], "msg": msg, "type": kind}`` plus ``input`` when given.
    """
    error: dict[str, Any] = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if value is not _MISSING:
        error["input"] = value
    return error


def is_image_url(value: str) -> bool:
    """True for an http(s) URL with a host, or a ``data:`` URI with a payload."""
    if value.startswith("data:"):
        return "," in value
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and " " not in value


def validate_input(body: Any) -> list[dict[str, Any]]:
    """Check a submit body; an empty list means it is valid.

    Args:
        body: the decoded JSON body.

    Returns:
        The 422 ``detail`` entries, one per problem, in field order.
    """
    if not isinstance(body, dict):
        return [field_error([], "Input should be a valid dictionary", "dict_type", body)]
    errors = _check_prompt(body) + _check_image_urls(body)
    for name, allowed in ENUMS.items():
        if name in body and body[name] not in allowed:
            errors.append(_literal_error(name, allowed, body[name]))
    errors += _check_num_images(body)
    if "sync_mode" in body and not isinstance(body["sync_mode"], bool):
        errors.append(
            field_error(
                ["sync_mode"], "Input should be a valid boolean", "bool_type", body["sync_mode"]
            )
        )
    return errors


def _check_prompt(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "prompt" not in body:
        return [field_error(["prompt"], "Field required", "missing")]
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        return [field_error(["prompt"], "Input should be a valid string", "string_type", prompt)]
    if not prompt.strip():
        return [
            field_error(
                ["prompt"],
                "String should have at least 1 non-blank character",
                "string_too_short",
                prompt,
            )
        ]
    return []


def _check_image_urls(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "image_urls" not in body:
        return [field_error(["image_urls"], "Field required", "missing")]
    urls = body["image_urls"]
    if not isinstance(urls, list):
        return [field_error(["image_urls"], "Input should be a valid list", "list_type", urls)]
    if not urls:
        return [
            field_error(
                ["image_urls"],
                "List should have at least 1 item after validation, not 0",
                "too_short",
                urls,
            )
        ]
    errors = []
    for index, url in enumerate(urls):
        if not isinstance(url, str):
            errors.append(
                field_error(
                    ["image_urls", index], "Input should be a valid string", "string_type", url
                )
            )
        elif not is_image_url(url):
            errors.append(
                field_error(
                    ["image_urls", index],
                    "Input should be an http(s) URL or a data URI",
                    "url_parsing",
                    url,
                )
            )
    return errors


def _literal_error(name: str, allowed: tuple[str, ...], value: Any) -> dict[str, Any]:
    quoted = [f"'{a}'" for a in allowed]
    expected = ", ".join(quoted[:-1]) + " or " + quoted[-1]
    error = field_error([name], f"Input should be {expected}", "literal_error", value)
    error["ctx"] = {"expected": expected}
    return error


def _check_num_images(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "num_images" not in body:
        return []
    value = body["num_images"]
    # bool is an int subclass in Python; JSON true is not a count.
    if isinstance(value, bool) or not isinstance(value, int):
        return [field_error(["num_images"], "Input should be a valid integer", "int_type", value)]
    if value < 1:
        return [_bound_error("greater_than_equal", "greater than or equal to 1", 1, value)]
    if value > 4:
        return [_bound_error("less_than_equal", "less than or equal to 4", 4, value)]
    return []


def _bound_error(kind: str, text: str, limit: int, value: int) -> dict[str, Any]:
    error = field_error(["num_images"], f"Input should be {text}", kind, value)
    error["ctx"] = {"ge" if kind == "greater_than_equal" else "le": limit}
    return error
