"""The argument parser, with the conventions people know from gh, pip and httpie.

``--version``; help on no arguments and on ``help [COMMAND]``; examples in every command's
help; no abbreviated flags (``--qual`` is not ``--quality``); an unknown flag or a mistyped
value is reported under the usage of the command it was given to, with "did you mean".
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, NoReturn

from .. import EndpointId, InputError

__all__ = ["Parser", "endpoint", "examples"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that never takes abbreviations and suggests close matches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def flags(self) -> list[str]:
        """Every option string this parser takes."""
        return [s for action in self._actions for s in action.option_strings]

    def commands(self) -> dict[str, Parser]:
        """This parser's subcommands by name (none for a leaf command)."""
        for action in self._actions:
            if isinstance(action.choices, dict):  # only a subparsers action maps to parsers
                return {k: v for k, v in action.choices.items() if isinstance(v, Parser)}
        return {}

    def unknown(self, extras: list[str]) -> NoReturn:
        """Refuse arguments this (sub)command does not take, suggesting its close flags."""
        flags = self.flags()
        notes = []
        for extra in extras:
            name = extra.partition("=")[0]
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
            if name.startswith("-") and not close:
                close = [f for f in flags if f.startswith(name) and len(name) > 2][:1]
            notes.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
        self.error(f"unrecognized arguments: {' '.join(notes)}")

    def error(self, message: str) -> NoReturn:
        if "invalid choice:" in message:
            message = _suggest_choice(message)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _suggest_choice(message: str) -> str:
    """``invalid choice: 'bach' (choose from ...)`` plus "did you mean 'batch'?"."""
    try:
        given = message.split("invalid choice: ", 1)[1].split(" (choose from", 1)[0].strip("'")
        choices = message.split("(choose from ", 1)[1].rstrip(")").replace("'", "").split(", ")
    except IndexError:
        return message
    close = difflib.get_close_matches(given, choices, n=1)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def endpoint(text: str) -> str:
    """An ``--endpoint`` value checked before anything runs (a bad one is exit 2)."""
    try:
        return str(EndpointId.parse(text))
    except InputError as exc:
        raise argparse.ArgumentTypeError(
            f"not an endpoint id: {text!r} "
            "(expected owner/model, like fal-ai/gpt-image-1/edit-image)"
        ) from exc


def examples(*lines: str) -> str:
    """An epilog of examples, one command per line."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
