"""``fal-edit``: the command line (``python -m fal_edit_async``).

A thin layer over the public API. For now it serves the emulator (``fal-edit emulator``);
the edit, batch and re-attach commands build on the same parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fal-edit", description="Edit images with fal's gpt-image-1 edit endpoint."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    emulator = commands.add_parser(
        "emulator", help="serve the fal-compatible emulator in the foreground"
    )
    try:
        from .emulator._cli import add_arguments
    except ImportError:  # Pillow missing: say how to get it when the command is used
        emulator.set_defaults(missing_extra=True)
    else:
        add_arguments(emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failures, 2 usage errors)."""
    args = _parser().parse_args(argv)
    if args.command == "emulator":
        if getattr(args, "missing_extra", False):
            print(
                "fal-edit emulator needs Pillow: pip install 'fal-edit-async[emulator]'",
                file=sys.stderr,
            )
            return 2
        from .emulator._cli import run

        return run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands first
