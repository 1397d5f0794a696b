"""Manifest lines checked against ``docs/manifest.schema.json``, with messages a person reads.

A JSON Schema validator of the few keywords that schema uses (``type``, ``enum``,
``properties``, ``required``, ``additionalProperties``, ``oneOf`` of ``required``, ``items``,
``minItems``, ``minLength``, ``pattern``, ``minimum``, ``maximum``), so the command line needs
no new dependency. The schema ships in this package; a test keeps the copy in ``docs/`` equal.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["manifest_schema", "problems"]

_TYPES: Mapping[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}
_NAMES = {"object": "an object", "array": "a list", "string": "a string", "integer": "a whole "
          "number", "number": "a number", "boolean": "true or false"}  # fmt: skip


@cache
def manifest_schema() -> Mapping[str, Any]:
    """The JSON Schema of one manifest line."""
    text = files(__package__).joinpath("manifest.schema.json").read_text(encoding="utf-8")
    schema: Mapping[str, Any] = json.loads(text)
    return schema


def problems(instance: object, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every way ``instance`` breaks the schema, as ``field: what is wrong`` lines."""
    return list(_check(instance, schema or manifest_schema(), ""))


def _is(value: object, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(value: object, schema: Mapping[str, Any], at: str) -> Iterator[str]:
    where = f"{at}: " if at else ""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            wanted = " or ".join(_NAMES[k] for k in kinds)
            yield f"{where}{_show(value)} is not {wanted}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}{_show(value)} is not one of {', '.join(map(str, schema['enum']))}"
        return
    if isinstance(value, str):
        yield from _check_string(value, schema, where)
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield f"{where}needs at least {schema['minItems']} item(s)"
        for n, item in enumerate(value):
            yield from _check(item, schema.get("items", {}), f"{at}[{n}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{where}{value} is less than {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{where}{value} is more than {schema['maximum']}"
    elif isinstance(value, dict):
        yield from _check_object(value, schema, at)


def _check_string(value: str, schema: Mapping[str, Any], where: str) -> Iterator[str]:
    if len(value.strip()) < schema.get("minLength", 0):
        yield f"{where}is empty"
    elif "pattern" in schema and not re.search(schema["pattern"], value):
        yield f"{where}{_show(value)}: {schema.get('description', 'does not match')}"


def _matches(value: dict[str, Any], branch: Mapping[str, Any]) -> bool:
    """A ``oneOf`` branch of the form {required: [a], not: {required: [b]}}."""
    excluded = branch.get("not", {}).get("required", ())
    return all(n in value for n in branch.get("required", ())) and not any(
        n in value for n in excluded
    )


def _check_object(value: dict[str, Any], schema: Mapping[str, Any], at: str) -> Iterator[str]:
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            yield f"{name} is missing"
    branches = schema.get("oneOf", ())
    if branches and sum(_matches(value, b) for b in branches) != 1:
        names = [n for b in branches for n in b.get("required", ())]
        given = [n for n in names if n in value]
        how = "not both" if given else "one is needed"
        yield f"give either {' or '.join(names)} ({how})"
    for name, item in value.items():
        if name in properties:
            yield from _check(item, properties[name], f"{at}.{name}" if at else name)
        elif schema.get("additionalProperties", True) is False:
            close = difflib.get_close_matches(name, list(properties), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield f"unknown field {name!r}{hint}"
