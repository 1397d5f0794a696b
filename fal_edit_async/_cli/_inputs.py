"""What the command line edits: inputs from arguments or a manifest, turned into batch items.

Every item gets a readable key (the input's file stem or URL basename, made unique), which
names its outputs, labels its log lines, and keys its journal row. A mistake on the command
line is a :class:`UsageError` (exit 2, nothing sent); a bad manifest line is an item that
failed, so one typo never stops the other 4,999 lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import attrs

from .. import (
    EditImageInput,
    FalEditError,
    ImageSource,
    InputError,
    input_from_dict,
    is_remote_url,
)
from ._messages import PlainInputError, message
from ._schema import problems

__all__ = [
    "IMAGE_SUFFIXES",
    "Planned",
    "Skipped",
    "Source",
    "check_image_file",
    "UsageError",
    "check_out_folder",
    "expand",
    "plan_edit",
    "plan_manifest",
    "unique_keys",
]

#: The files a folder contributes: the formats the model accepts.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit status 2, nothing sent."""


@attrs.frozen
class Source:
    """One input image as given: a local file or a URL, and the name its outputs get."""

    value: Path | str
    name: str


@attrs.frozen(kw_only=True)
class Planned:
    """One item of a run: a valid input with its key, or the error that makes it fail."""

    key: str
    input: EditImageInput | None = None
    error: FalEditError | None = None
    line: int | None = None
    #: The inputs of an item that failed before it had an input, for the report.
    shown: tuple[str, ...] = ()


@attrs.define
class Skipped:
    """What folders held that is not taken: other files, and subfolders (without --recursive)."""

    files: list[Path] = attrs.field(factory=list)
    folders: list[Path] = attrs.field(factory=list)

    def notice(self) -> str | None:
        """One line saying what was left out, or None."""
        parts = []
        if self.files:
            names = ", ".join(str(p) for p in self.files[:3])
            more = f" and {len(self.files) - 3} more" if len(self.files) > 3 else ""
            what = "that is not an image" if len(self.files) == 1 else "that are not images"
            parts.append(f"{_count(len(self.files), 'file')} {what} ({names}{more})")
        if self.folders:
            names = ", ".join(f"{p}/" for p in self.folders[:3])
            more = f" and {len(self.folders) - 3} more" if len(self.folders) > 3 else ""
            parts.append(
                f"{_count(len(self.folders), 'subfolder')} ({names}{more}; --recursive takes "
                "their images too)"
            )
        return f"Skipped {' and '.join(parts)}." if parts else None


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def expand(
    arguments: Iterable[str],
    base: Path | None = None,
    *,
    recursive: bool = False,
    skipped: Skipped | None = None,
) -> list[Source]:
    """Files, folders (every image in them) and http(s) URLs, in the order given.

    What a folder holds besides images is noted in ``skipped``.

    Raises:
        UsageError: a path that does not exist, or a folder without images.
    """
    sources: list[Source] = []
    for argument in arguments:
        if is_remote_url(argument):
            sources.append(Source(argument, _url_name(argument)))
            continue
        path = Path(argument).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        sources.extend(_local(argument, path, recursive, skipped or Skipped()))
    return sources


def _local(argument: str, path: Path, recursive: bool, skipped: Skipped) -> list[Source]:
    if path.is_dir():
        images = _images(path, recursive, skipped)
        if not images:
            suffixes = ", ".join(sorted(s[1:] for s in IMAGE_SUFFIXES))
            raise UsageError(f"no images ({suffixes}) in folder {argument}")
        return [Source(p, p.stem) for p in images]
    if path.is_file():
        return [Source(path, path.stem)]
    if "://" in argument:
        raise UsageError(f"not an http(s) URL: {argument}")
    raise UsageError(f"no such file or folder: {argument}")


def _images(folder: Path, recursive: bool, skipped: Skipped) -> list[Path]:
    images = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if recursive:
                images += _images(p, recursive, skipped)
            else:
                skipped.folders.append(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            images.append(p)
        else:
            skipped.files.append(p)
    return images


#: The first bytes of each format the model accepts.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", 0), (b"\xff\xd8\xff", 0), (b"WEBP", 8))


def check_image_file(path: Path) -> str | None:
    """Why a local file is no image the model accepts (empty, or not PNG, JPEG or WebP by its
    first bytes), or None. Reads 12 bytes, so a 200-file dry run stays instant."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if not head:
        return "it is empty"
    if not any(head[at : at + len(magic)] == magic for magic, at in _MAGIC):
        return "its contents are not PNG, JPEG or WebP, whatever its name says"
    return None


def _bad_file(urls: Sequence[ImageSource], field: str) -> InputError | None:
    for n, source in enumerate(urls):
        if isinstance(source, Path) and (why := check_image_file(source)) is not None:
            return PlainInputError(f"{field}[{n}]", source, f"{source} is not an image ({why})")
    return None


def _url_name(url: str) -> str:
    if url.startswith("data:"):
        return "image"
    parts = urlsplit(url)
    return PurePosixPath(parts.path).stem or parts.hostname or "image"


def unique_keys(names: Sequence[str], taken: Iterable[str] = ()) -> list[str]:
    """``names`` with ``-2``, ``-3``... added to repeats (and to names already ``taken``)."""
    used = set(taken)
    keys = []
    for name in names:
        key, n = name, 1
        while key in used:
            n += 1
            key = f"{name}-{n}"
        used.add(key)
        keys.append(key)
    return keys


def plan_edit(
    prompt: str, sources: Sequence[Source], options: Mapping[str, Any], *, together: bool
) -> list[Planned]:
    """One item per source, or one item of every source with ``together``.

    Raises:
        UsageError: the prompt or an option is invalid (it is the same for every item).
    """
    groups = [list(sources)] if together else [[s] for s in sources]
    keys = unique_keys([group[0].name for group in groups])
    planned = []
    for key, group in zip(keys, groups, strict=True):
        urls: list[ImageSource] = [s.value for s in group]
        try:
            input = input_from_dict({"prompt": prompt, "image_urls": urls, **options})
        except InputError as exc:
            raise UsageError(message(exc)) from exc
        bad = _bad_file(urls, "image_urls")
        shown = tuple(str(s) for s in urls)
        if bad is None:
            planned.append(Planned(key=key, input=input))
        else:
            planned.append(Planned(key=key, error=bad, shown=shown))
    return planned


def plan_manifest(path: Path, defaults: Mapping[str, Any]) -> list[Planned]:
    """One item per non-blank line of a JSON-lines manifest; a bad line is a failed item.

    A line is an object with ``prompt``, ``inputs`` (files, folders or URLs, relative paths
    taken from the manifest's folder) or ``image_urls`` (URLs as sent), any option, and an
    optional ``key``. Options given on the command line (``defaults``) apply where a line
    does not set them.

    Raises:
        UsageError: the manifest cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read manifest {path}: {exc}") from exc
    # Lines as editors number them: split on newlines only (splitlines also splits on
    # U+2028 and form feeds, which JSON strings may hold, and then every number after is off).
    lines = text.split("\n")
    rows = [(n, line.rstrip("\r")) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise UsageError(f"manifest {path} has no lines: one JSON object per line, one edit each")
    parsed = [_parse_line(n, line) for n, line in rows]
    explicit = [_explicit_key(payload) for _, payload in parsed]
    names = [_line_name(n, payload) for n, payload in parsed]
    derived = iter(unique_keys([name for name in names if name], {k for k in explicit if k}))
    seen: dict[str, int] = {}
    planned = []
    for (n, payload), key in zip(parsed, explicit, strict=True):
        planned.append(_plan_line(n, key or next(derived), payload, path.parent, defaults, seen))
    return planned


def _parse_line(n: int, line: str) -> tuple[int, object]:
    try:
        return n, json.loads(line)
    except ValueError as exc:
        return n, PlainInputError(f"line {n}", line.strip(), f"not a JSON object ({exc})")


def _explicit_key(payload: object) -> str | None:
    key = payload.get("key") if isinstance(payload, dict) else None
    return key if isinstance(key, str) and key else None


def _line_name(n: int, payload: object) -> str | None:
    """The name a line's key is derived from; None when the line sets its own key."""
    if _explicit_key(payload) is not None:
        return None
    if isinstance(payload, dict):
        images = payload.get("inputs") or payload.get("image_urls")
        first = images[0] if isinstance(images, list) and images else images
        if isinstance(first, str) and first:
            return _url_name(first) if is_remote_url(first) else Path(first).stem or f"line-{n}"
    return f"line-{n}"


def _plan_line(
    n: int,
    key: str,
    payload: object,
    base: Path,
    defaults: Mapping[str, Any],
    seen: dict[str, int],
) -> Planned:
    try:
        if isinstance(payload, InputError):
            raise payload
        if key in seen:
            raise PlainInputError(
                "key", key, f"key {key!r} is already used by line {seen[key]}; keys are unique"
            )
        seen[key] = n
        if isinstance(payload, dict) and (found := problems(payload)):
            raise PlainInputError(f"line {n}", payload, "; ".join(found))
        input = _line_input(payload, base, defaults)
    except InputError as exc:
        return Planned(key=key, error=exc, line=n)
    return Planned(key=key, input=input, line=n)


def _line_input(payload: object, base: Path, defaults: Mapping[str, Any]) -> EditImageInput:
    if not isinstance(payload, dict):
        raise InputError("line", payload, "a JSON object")
    data = {**defaults, **{k: v for k, v in payload.items() if k not in ("key", "inputs")}}
    if "key" in payload and not (isinstance(payload["key"], str) and payload["key"]):
        raise InputError("key", payload["key"], "a non-empty string")
    if "inputs" in payload:
        if "image_urls" in payload:
            raise InputError("inputs", payload["inputs"], "either inputs or image_urls, not both")
        data["image_urls"] = _line_sources(payload["inputs"], base)
    return input_from_dict(data)


def _line_sources(inputs: object, base: Path) -> list[ImageSource]:
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise InputError("inputs", inputs, "a list of files, folders or http(s) URLs")
    for entry in inputs:
        if not is_remote_url(entry) and (base / Path(entry).expanduser()).is_dir():
            raise PlainInputError(
                "inputs",
                entry,
                f"inputs: {entry} is a folder, which would make one job of all its images; "
                "list the files (one line each), or run `fal-edit edit PROMPT FOLDER`",
            )
    try:
        sources: list[ImageSource] = [s.value for s in expand(inputs, base)]
    except UsageError as exc:
        raise PlainInputError("inputs", inputs, f"inputs: {exc}") from exc
    bad = _bad_file(sources, "inputs")
    if bad is not None:
        raise bad
    return sources


def check_out_folder(out: Path, planned: Sequence[Planned]) -> None:
    """Refuse an output folder that holds inputs: the next run would take outputs for inputs.

    Raises:
        UsageError: a local input lies directly in ``out``, as a file or as a symlink to one
            (a later run that lists ``out`` takes the link's folder, not its target's).
    """
    folder = out.resolve()
    for item in planned:
        for source in item.input.image_urls if item.input is not None else ():
            if not isinstance(source, Path):
                continue
            places = {source.resolve().parent, source.absolute().parent.resolve()}
            if folder in places:
                raise UsageError(
                    f"--out {out} holds the input {source}: a later run would take the outputs "
                    "for inputs; choose another folder"
                )
