"""``fal-edit``: the command line (``python -m fal_edit_async``).

A thin layer over the public API: ``edit`` and ``batch`` run :meth:`AsyncClient.edit_many`
with a live display (or JSON lines when piped); ``status``, ``logs``, ``result`` and
``cancel`` re-attach to any job by its request id; ``journal show`` reads a batch's journal;
``report`` writes the HTML page of a journal; ``emulator`` serves the local emulator;
``completion`` prints a shell completion script; ``help`` shows help.
It imports only public names, plus the short allow-list in ``tests/test_cli_imports.py``.
This module builds the parser; what each command does is in ``_commands``, loaded only when
a command runs, so help and completion never load aiohttp, anyio or the emulator's server
(``tests/test_cli_startup.py``).

Exit statuses: 0 all done, 1 some items failed (or the journal failed a write), 2 usage or
credential errors (and a journal another run is using), 129 hung up (SIGHUP: the terminal
closed), 130 interrupted, 141 stdout closed, 143 terminated (SIGTERM).
Errors are one line; ``--debug`` adds the traceback. The API key is never printed.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .. import (
    DEFAULT_ENDPOINT,
    DEFAULT_NAME_TEMPLATE,
    Background,
    ImageSize,
    InputError,
    InputFidelity,
    NameTemplate,
    OutputFormat,
    Quality,
    __version__,
)
from ._completion import script
from ._parser import Parser, endpoint, examples

__all__ = ["main"]

#: The schema options, as (flag, field, choices); each flag is left out of a request unless given.
_ENUM_OPTIONS = (
    ("--image-size", "image_size", ImageSize),
    ("--background", "background", Background),
    ("--quality", "quality", Quality),
    ("--input-fidelity", "input_fidelity", InputFidelity),
    ("--output-format", "output_format", OutputFormat),
)


def _positive(kind: Callable[[str], Any], text: str) -> Any:
    try:
        value = kind(text)
        ok = value > 0
    except (ValueError, InvalidOperation):  # Decimal("nan") > 0 raises InvalidOperation
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _name_template(value: str) -> str:
    try:
        return NameTemplate.parse(value, "--name").text
    except InputError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: expected {exc.allowed}") from None


def _out_folder(value: str) -> Path:
    """An ``--out`` folder: it may not exist yet, but it may not be a file."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {value}")
    return path


def _journal(value: str) -> Path | str:
    """A ``--journal``: a SQLite file, or a ``postgresql://`` address (kept as written)."""
    if value.startswith(("postgresql://", "postgres://")):
        return value
    return Path(value)


def _common() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--endpoint",
        type=endpoint,
        default=DEFAULT_ENDPOINT,
        help=f"fal endpoint id (default {DEFAULT_ENDPOINT})",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return common


def _run_options() -> Parser:
    run = Parser(add_help=False)
    schema = run.add_argument_group("edit options (sent to the model; its defaults if not given)")
    for flag, field, choices in _ENUM_OPTIONS:
        schema.add_argument(flag, dest=field, choices=[c.value for c in choices])
    schema.add_argument("--num-images", type=int, choices=range(1, 5), metavar="{1..4}")
    schema.add_argument(
        "--sync-mode",
        action=argparse.BooleanOptionalAction,
        help="get images inline as data URIs instead of URLs",
    )
    how = run.add_argument_group("running")
    how.add_argument(
        "--out",
        type=_out_folder,
        default=Path("edited"),
        metavar="DIR",
        help="folder for the edited images, named after the inputs (default: ./edited); never "
        "a folder the inputs are in",
    )
    how.add_argument(
        "--overwrite",
        action="store_true",
        help="let outputs replace files already in --out (by default they get a new name)",
    )
    how.add_argument(
        "--name",
        type=_name_template,
        default=DEFAULT_NAME_TEMPLATE,
        metavar="TEMPLATE",
        dest="name_template",
        help="how outputs are named, from {stem} (the input's name), {n} (the image's index), "
        "{key} and {request_id}, ending in .{ext} (default: %(default)s); a name already "
        "taken gets -2, -3...",
    )
    how.add_argument(
        "--no-download", action="store_true", help="keep the outputs on fal; print their URLs"
    )
    how.add_argument(
        "--concurrency",
        type=functools.partial(_positive, int),
        metavar="N",
        help="jobs on fal at once (default 16)",
    )
    how.add_argument(
        "--budget",
        type=functools.partial(_positive, Decimal),
        metavar="USD",
        help="never submit items whose estimated cost would cross this total",
    )
    how.add_argument(
        "--journal",
        type=_journal,
        metavar="PATH|URL",
        help="record every job in this file; run again with it to resume without paying twice "
        "(a postgresql:// address: a ledger that runs on many machines share)",
    )
    how.add_argument(
        "--max-in-flight",
        type=functools.partial(_positive, int),
        metavar="N",
        help="jobs on fal at once across every run sharing a postgresql:// --journal "
        "(fal's account concurrency); also caps --concurrency",
    )
    how.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --journal: submit again the items an earlier run recorded as failed",
    )
    how.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="with --journal: submit again the items whose submit answer an earlier run lost "
        "(fal may have run and billed those already)",
    )
    how.add_argument(
        "--dry-run",
        action="store_true",
        help="check every input and print the estimated cost; send nothing",
    )
    how.add_argument(
        "--timeout",
        type=functools.partial(_positive, float),
        metavar="SECONDS",
        help="stop after this long, cancelling the jobs still on fal",
    )
    how.add_argument(
        "--report",
        type=Path,
        metavar="PAGE",
        help="write an HTML page of the run: each input beside its outputs (open it offline)",
    )
    how.add_argument(
        "--json", action="store_true", help="one JSON object per finished item on stdout"
    )
    loud = how.add_mutually_exclusive_group()
    loud.add_argument(
        "--quiet", "-q", action="store_true", help="print only failures and the summary"
    )
    loud.add_argument(
        "--verbose", "-v", action="store_true", help="print every model log line and retry"
    )
    how.add_argument(
        "--emulator",
        action="store_true",
        help="run against a local fal emulator (no key, nothing paid) to try things out",
    )
    return run


_EPILOG = (
    "Credentials: FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET); FAL_QUEUE_URL and FAL_REST_URL "
    "to point at another queue (`fal-edit emulator` prints them).\n"
    "Exit status: 0 all done, 1 some items failed or the journal failed, 2 usage or "
    "credential error, 129 hung up, 130 interrupted, 141 stdout closed, 143 terminated.\n\n"
)


def _parser() -> Parser:
    parser = Parser(
        prog="fal-edit",
        description="Edit images with fal's gpt-image-1 edit endpoint.",
        epilog=_EPILOG
        + examples(
            'fal-edit edit "make it pixel art" photo.png',
            'fal-edit edit "studio background" photos/ --journal run.db --report report.html',
            "fal-edit batch jobs.jsonl --budget 20 --dry-run",
            'fal-edit edit "watercolour" photo.png --emulator   # offline, nothing paid',
            "fal-edit help batch",
        ),
    )
    parser.add_argument("--version", action="version", version=f"fal-edit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    common, run = _common(), _run_options()
    edit = commands.add_parser(
        "edit",
        parents=[common, run],
        help="edit images: one job per input image",
        description="Edit each INPUT (an image file, a folder of images, or an http(s) URL) "
        "with PROMPT, one job per image (or one job for all with --together).",
        epilog=examples(
            'fal-edit edit "make it pixel art" photo.png',
            'fal-edit edit "white studio background" photos/ --out edited/ --journal run.db',
            'fal-edit edit "add a hat" https://example.com/cat.jpg --quality low --dry-run',
            'fal-edit edit "combine them" front.png back.png --together',
        ),
    )
    edit.add_argument("prompt", metavar="PROMPT", help="what to do to the images")
    edit.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="an image file, a folder (its images, leaving out names that start with a dot), "
        "or an http(s) URL",
    )
    edit.add_argument(
        "--together", action="store_true", help="send every input in one request's image_urls"
    )
    edit.add_argument(
        "--recursive", "-r", action="store_true", help="take images in subfolders too"
    )
    edit.set_defaults(handler=_later("edit", edit))
    batch = commands.add_parser(
        "batch",
        parents=[common, run],
        help="run a JSON-lines manifest: one edit per line",
        description='Run MANIFEST, one JSON object per line: {"prompt": ..., "inputs": [files '
        'or URLs] or "image_urls": [URLs], options..., "key": optional name}. Relative '
        "paths are taken from the manifest's folder; flags set options lines leave out. "
        "The lines' JSON Schema is docs/manifest.schema.json.",
        epilog=examples(
            "fal-edit batch jobs.jsonl --dry-run",
            "fal-edit batch jobs.jsonl --budget 25 --journal jobs.db --report report.html",
            "fal-edit batch jobs.jsonl --json > results.jsonl",
            'a line: {"prompt": "pixel art", "inputs": ["cat.png"], "quality": "low"}',
        ),
    )
    batch.add_argument("manifest", type=Path, metavar="MANIFEST", help="a .jsonl file")
    batch.set_defaults(handler=_later("batch"))
    _add_job_commands(commands, common)
    _add_journal(commands, common)
    _add_report(commands)
    _add_emulator(commands)
    _add_completion(commands)
    helper = commands.add_parser(
        "help",
        help="show help for a command",
        description="Show help for fal-edit, or for one of its commands.",
        epilog=examples("fal-edit help", "fal-edit help batch", "fal-edit help journal show"),
    )
    helper.add_argument("topic", nargs="*", metavar="COMMAND")
    helper.set_defaults(handler=functools.partial(_help, parser))
    return parser


def _add_journal(commands: Any, common: argparse.ArgumentParser) -> None:
    journal = commands.add_parser(
        "journal",
        help="look into a batch's journal",
        description="Look into a batch's journal.",
        epilog=examples("fal-edit journal show run.db", "fal-edit journal show run.db --json"),
    )
    actions = journal.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=Parser
    )
    text = "counts by state, cost so far, and the unknown and failed items with their reasons"
    show = actions.add_parser(
        "show",
        parents=[common],
        help=text,
        description=text + ".",
        epilog=examples("fal-edit journal show run.db", "fal-edit journal show run.db --json"),
    )
    show.add_argument("journal", type=_journal, metavar="JOURNAL", help="a file or postgresql://")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_later("journal_show"))
    text = "settle the journal's lost submits from fal's history and webhooks"
    settle = commands.add_parser(
        "reconcile",
        parents=[common],
        help=text,
        description=text + ".",
        epilog=examples("fal-edit reconcile run.db", "fal-edit reconcile run.db --strict --json"),
    )
    settle.add_argument("journal", type=_journal, metavar="JOURNAL", help="a file or postgresql://")
    settle.add_argument("--strict", action="store_true", help="never make an item resubmittable")
    settle.add_argument("--json", action="store_true", help="print JSON")
    settle.set_defaults(handler=_later("job", "reconcile"))


def _add_report(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="write the HTML page of a journal's items",
        description="Write one self-contained HTML page of the items JOURNAL records: outputs, "
        "prompt and options, state, cost, request id and errors, with a filter by state. "
        "(The journal keeps local inputs by their hash, so only URL inputs are shown; "
        "--report on edit and batch shows every input.)",
        epilog=examples(
            "fal-edit report run.db",
            "fal-edit report run.db --out edited/report.html",
        ),
    )
    report.add_argument("journal", type=Path, metavar="JOURNAL")
    report.add_argument(
        "--out",
        type=Path,
        metavar="PAGE",
        help="where to write the page (default: report.html beside the journal)",
    )
    report.set_defaults(handler=_later("report_page"))


def _add_job_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    specs = {
        "status": ("print a job's status", "fal-edit status REQUEST_ID --logs"),
        "logs": (
            "print a job's log lines (--follow streams them until it completes)",
            "fal-edit logs REQUEST_ID --follow",
        ),
        "result": (
            "wait for a job and print its output (--out downloads it)",
            "fal-edit result REQUEST_ID --out edited/",
        ),
        "cancel": ("cancel a job on fal", "fal-edit cancel REQUEST_ID"),
    }
    for name, (text, example) in specs.items():
        sub = commands.add_parser(
            name,
            parents=[common],
            help=text,
            description=text + ". REQUEST_ID is printed by edit and batch (and in --json).",
            epilog=examples(example, f"fal-edit {name} REQUEST_ID --endpoint fal-ai/OTHER/MODEL"),
        )
        sub.add_argument("request_id", metavar="REQUEST_ID")
        sub.set_defaults(handler=_later("job", name))
        if name != "result":
            sub.add_argument("--json", action="store_true", help="print JSON")
    commands.choices["status"].add_argument(
        "--logs", action="store_true", help="include the log lines"
    )
    commands.choices["logs"].add_argument(
        "--follow", "-f", action="store_true", help="stream until the job completes"
    )
    result = commands.choices["result"]
    result.add_argument("--out", type=_out_folder, metavar="DIR", help="download here")
    result.add_argument(
        "--timeout",
        type=functools.partial(_positive, float),
        metavar="SECONDS",
        help="stop waiting after this long (the job keeps running)",
    )


def _add_emulator(commands: Any) -> None:
    emulator = commands.add_parser(
        "emulator",
        help="serve the fal-compatible emulator in the foreground",
        description="Serve a local fal-compatible emulator (queue, storage, CDN) until Ctrl-C. "
        "It prints the export lines that point fal-edit (and fal-client) at it.",
        epilog=examples(
            "fal-edit emulator --port 8765",
            "fal-edit emulator --model-failure 0.1 --rate-limit 0.05 --verbose",
            "fal-edit emulator --api-key secret   # only this key is accepted",
        ),
    )
    # The emulator's own command line, so `fal-edit emulator` and
    # `python -m fal_edit_async.emulator` take the same options. It loads without Pillow and
    # without the server; the command says how to get Pillow when it is missing.
    from ..emulator import add_arguments

    add_arguments(emulator)
    emulator.set_defaults(handler=_later("emulator"))


def _add_completion(commands: Any) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for bash or zsh.",
        epilog=examples(
            "source <(fal-edit completion bash)      # in ~/.bashrc",
            "fal-edit completion zsh > ~/.zfunc/_fal-edit",
        ),
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler=_completion)


def _completion(args: argparse.Namespace) -> int:
    print(script(_parser(), args.shell), end="")
    return 0


def _help(parser: Parser, args: argparse.Namespace) -> int:
    target = parser
    for word in args.topic:
        commands = target.commands()
        if word not in commands:
            target.error(f"no command {word!r}; commands: {', '.join(commands)}")
        target = commands[word]
    target.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failures, 2 usage, 130 Ctrl-C)."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Report them under the command they were given to, with its flags to suggest.
        _leaf(parser, args).unknown(extras)
    try:
        status: int = args.handler(args)
    except SystemExit:  # usage errors (`fal-edit help nosuch`) need no error reporting loaded
        raise
    except BaseException as exc:  # one clear line per error; the traceback only with --debug
        from ._commands import failure

        return failure(exc, debug=getattr(args, "debug", False))
    return status


def _later(name: str, *bound: Any) -> Callable[[argparse.Namespace], int]:
    """The handler ``_commands.<name>`` (given ``bound`` first), imported when it runs: so
    building the parser, as ``--help`` does, loads no HTTP client, batch runner or server."""
    return functools.partial(_run_command, name, *bound)


def _run_command(name: str, *args: Any) -> int:
    from . import _commands

    status: int = getattr(_commands, name)(*args)
    return status


def _leaf(parser: Parser, args: argparse.Namespace) -> Parser:
    """The (sub)command parser that took ``args``."""
    target = parser
    for name in (getattr(args, "command", None), getattr(args, "action", None)):
        commands = target.commands()
        if name is None or name not in commands:
            break
        target = commands[name]
    return target
