"""Output file names from a template such as ``{stem}_{n}.{ext}``.

The template is checked when a batch is set up, so a bad one costs nothing. Rendering never
fails: every value is made safe and the name is cut to fit, keeping the parts that make it
unique (the index, the key, the request id, and the ``-2`` a collision adds).
"""

from __future__ import annotations

import re
import string

import attrs

from ._exceptions import InputError
from ._files import numbered_stem, safe_stem

__all__ = ["DEFAULT_NAMES", "DEFAULT_NAME_TEMPLATE", "NameTemplate", "claim_number"]

#: Today's names, and the default: ``photo_0.png``, ``photo_1.png``, ``photo-2_0.png``...
DEFAULT_NAME_TEMPLATE = "{stem}_{n}.{ext}"

_FIELDS = ("stem", "n", "ext", "key", "request_id")
#: A rendered name (without its extension) stays under this many UTF-8 bytes, so that with
#: the extension and the temp file's ``.<pid>-<counter>.part`` it fits in 255.
_MAX_BASE_BYTES = 200
#: Caps on the parts a template adds to the stem: what is left (at least 32 bytes) is the
#: stem's.
_MAX_LITERAL_BYTES = 40
_MAX_VALUE_BYTES = 60
_MAX_N_WIDTH = 8
_UNSAFE_LITERAL = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|{}]')
_CLAIMED = re.compile(r"-(\d+)$")
_N_SPEC = re.compile(r"0?[1-9]?\d?d?")


@attrs.frozen(kw_only=True)
class NameTemplate:
    """A checked output-name template: ``{stem}``, ``{n}`` (the image's index, from 0, with
    an optional format such as ``{n:02}``), ``{key}``, ``{request_id}``, ending in ``.{ext}``
    (the extension of the format the file really is).

    Usage::

        template = NameTemplate.parse("{key}-{n:02}.{ext}")  # InputError when it is bad
        async with fal.edit_many(items, download_to="out", name_template=template.text): ...
    """

    text: str
    #: (literal, field, format spec) for each piece, the ``.{ext}`` left out.
    _parts: tuple[tuple[str, str | None, str], ...] = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: object, field: str = "name_template") -> NameTemplate:
        """The template ``text``, or an :class:`InputError` saying what is wrong with it."""
        if not isinstance(text, str):
            raise InputError(field, text, "a name template such as '{stem}_{n}.{ext}'")
        if not text.endswith(".{ext}"):
            raise InputError(
                field, text, "a template ending in '.{ext}', such as '{stem}_{n}.{ext}'"
            )
        try:
            parsed = list(string.Formatter().parse(text[: -len(".{ext}")]))
        except ValueError as exc:
            raise InputError(field, text, f"a valid template ({exc})") from exc
        parts: list[tuple[str, str | None, str]] = []
        literal_bytes = 0
        seen: set[str] = set()
        for literal, name, spec, conversion in parsed:
            if _UNSAFE_LITERAL.search(literal):
                raise InputError(field, text, 'no / \\ : * ? " < > | or control characters')
            literal_bytes += len(literal.encode())
            if name is None:
                parts.append((literal, None, ""))
                continue
            if name not in _FIELDS or name == "ext":
                known = ", ".join(f"{{{f}}}" for f in _FIELDS if f != "ext")
                raise InputError(field, text, f"fields among {known}, and '.{{ext}}' at the end")
            if name in seen:
                raise InputError(field, text, f"each field at most once ({{{name}}} is repeated)")
            if conversion or (spec and name != "n"):
                raise InputError(field, text, "no conversions, and a format only on {n}")
            if spec:
                # Digits only: a fill character or the ``c`` type would put in a name what
                # the fixed text may not hold (a ``/``, a control character, a leading dot).
                if not _N_SPEC.fullmatch(spec):
                    msg = "a format for {n} of zero-padding and width only, such as {n:02}"
                    raise InputError(field, text, msg)
                width = len(format(0, spec))
                if width > _MAX_N_WIDTH:
                    raise InputError(field, text, f"{{n}} at most {_MAX_N_WIDTH} wide")
            seen.add(name)
            parts.append((literal, name, spec or ""))
        if literal_bytes > _MAX_LITERAL_BYTES:
            raise InputError(field, text, f"at most {_MAX_LITERAL_BYTES} bytes of fixed text")
        if not seen and not literal_bytes:
            raise InputError(field, text, "a name before '.{ext}'")
        if parts and parts[0][0].startswith((".", " ")):
            raise InputError(field, text, "a name that does not start with a dot or a space")
        return cls(text=text, parts=tuple(parts))

    @property
    def _n_spec(self) -> str:
        return next((spec for _, name, spec in self._parts if name == "n"), "")

    @property
    def numbered(self) -> bool:
        """True when the template has ``{n}``: only then may an item have several images."""
        return any(name == "n" for _, name, _ in self._parts)

    def base(self, *, stem: str, claim: int, n: int, key: str, request_id: str) -> str:
        """The name of image ``n`` without its extension; ``claim`` is the item's place among
        the items whose names would collide (1 for the first, which gets no suffix).

        ``stem`` is a :func:`safe_stem`; ``key`` and ``request_id`` are made safe here.
        """
        suffix = "" if claim == 1 else f"-{claim}"
        values = {
            "n": format(n, self._n_spec),
            "key": _cut(safe_stem(key), _MAX_VALUE_BYTES),
            "request_id": _cut(safe_stem(request_id), _MAX_VALUE_BYTES),
        }
        fixed = sum(
            len(literal.encode()) + len(values.get(name or "", "").encode())
            for literal, name, _ in self._parts
        )
        has_stem = any(name == "stem" for _, name, _ in self._parts)
        if has_stem:
            room = _MAX_BASE_BYTES - fixed
            values["stem"] = numbered_stem(
                _cut(stem, room - len(suffix)).rstrip(". ") or "image", claim
            )
        text = "".join(
            literal + values.get(name, "") if name else literal for literal, name, _ in self._parts
        )
        return text if has_stem else text + suffix

    def bases(self, *, stem: str, claim: int, count: int, key: str, request_id: str) -> list[str]:
        """:meth:`base` for each of ``count`` images."""
        return [
            self.base(stem=stem, claim=claim, n=n, key=key, request_id=request_id)
            for n in range(count)
        ]


#: :data:`DEFAULT_NAME_TEMPLATE`, parsed.
DEFAULT_NAMES = NameTemplate.parse(DEFAULT_NAME_TEMPLATE)


def claim_number(claimed: str, stem: str) -> int | None:
    """The claim number of a stem a ledger recorded (``photo-3`` of ``photo`` is 3), or None
    when ``claimed`` is not one of ``stem``'s."""
    if claimed == stem:
        return 1
    found = _CLAIMED.search(claimed)
    if found is None:
        return None
    number = int(found.group(1))
    return number if number > 1 and numbered_stem(stem, number) == claimed else None


def _cut(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` UTF-8 bytes, never inside a character."""
    return text.encode()[: max(most, 0)].decode(errors="ignore")
