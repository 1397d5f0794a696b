"""What the commands do, and how their errors are told: loaded only when a command runs.

The parser (``fal_edit_async._cli``) names these functions without importing this module, so
``fal-edit --help`` never pays for aiohttp, anyio, the batch runner or the emulator.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .. import (
    AuthError,
    Credentials,
    FalEditError,
    InputError,
    JournalLockedError,
    estimate_cost,
    is_remote_url,
)
from . import _ENUM_OPTIONS, _jobs, _ledger, _loop, _reconcile
from ._inputs import (
    Planned,
    Skipped,
    UsageError,
    check_out_folder,
    expand,
    plan_edit,
    plan_manifest,
)
from ._messages import message
from ._progress import Progress
from ._report import JsonReporter, LinesReporter, Reporter, Verbosity, printable
from ._run import (
    FAILED,
    INTERRUPTED,
    NO_CREDENTIALS_FOR_JOBS,
    USAGE,
    RunOptions,
    auth_message,
    check_credentials,
    dry_run,
    run_batch,
)

__all__ = ["batch", "edit", "emulator", "failure", "job", "journal_show", "report_page"]

#: The commands that act on one job (or a journal's jobs) on fal, by name.
_JOBS: dict[str, Callable[[argparse.Namespace, TextIO], Awaitable[int]]] = {
    "status": _jobs.status,
    "logs": _jobs.logs,
    "result": _jobs.result,
    "cancel": _jobs.cancel,
    "reconcile": _reconcile.reconcile,
}


def journal_show(args: argparse.Namespace) -> int:
    """``fal-edit journal show``."""
    return _loop.run(_ledger.show, args, sys.stdout)


def report_page(args: argparse.Namespace) -> int:
    """``fal-edit report``."""
    if not args.journal.is_file():
        raise UsageError(f"no such journal: {args.journal}")
    page = args.out or args.journal.with_name("report.html")
    n = _loop.run(_ledger.report, args.journal, page)
    print(f"wrote {page} ({n} item{'' if n == 1 else 's'})", file=sys.stderr)
    return 0


def emulator(args: argparse.Namespace) -> int:
    """``fal-edit emulator``."""
    if importlib.util.find_spec("PIL") is None:
        raise UsageError("fal-edit emulator needs Pillow: pip install 'fal-edit-async[emulator]'")
    from ..emulator import run

    return run(args)


def edit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``fal-edit edit``; ``parser`` is its own, for the usage a missing argument shows."""
    if not args.inputs:
        _missing_input(parser, args)
    skipped = Skipped()
    sources = expand(args.inputs, recursive=args.recursive, skipped=skipped)
    if (note := skipped.notice()) is not None and not args.quiet:
        print(note, file=sys.stderr)
    planned = plan_edit(args.prompt, sources, _schema_options(args), together=args.together)
    return _run(args, planned)


def _missing_input(parser: argparse.ArgumentParser, args: argparse.Namespace) -> NoReturn:
    """``fal-edit edit photo.png``: say which argument is missing, by what was given."""
    given = args.prompt
    if is_remote_url(given) or Path(given).expanduser().exists():
        parser.error(
            f"missing PROMPT: {given!r} is an input; the prompt comes first: "
            f'fal-edit edit "make it pixel art" {given}'
        )
    parser.error("missing INPUT: give the image files, folders or URLs to edit after PROMPT")


def batch(args: argparse.Namespace) -> int:
    """``fal-edit batch``."""
    return _run(args, plan_manifest(args.manifest, _schema_options(args)))


def _schema_options(args: argparse.Namespace) -> dict[str, Any]:
    names = [field for _, field, _ in _ENUM_OPTIONS] + ["num_images", "sync_mode"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _run(args: argparse.Namespace, planned: list[Planned]) -> int:
    if args.dry_run:
        return dry_run(
            planned,
            sys.stdout,
            sys.stderr,
            json_mode=args.json,
            budget=args.budget,
            endpoint=args.endpoint,
        )
    check_credentials(emulator=args.emulator)
    if args.emulator and args.journal is not None:
        # The in-process emulator's jobs and URLs end with this run: a journal of them could
        # never be resumed, and a re-run would fail every journaled item.
        raise UsageError(
            "--journal cannot resume jobs of --emulator, which ends with this run; to try "
            "resuming offline, run `fal-edit emulator` elsewhere and paste the export lines "
            "it prints (FAL_QUEUE_URL, FAL_REST_URL, FAL_KEY)"
        )
    out = None if args.no_download else args.out
    if out is not None:
        check_out_folder(out, planned)
    if (args.retry_failed or args.resubmit_unknown) and args.journal is None:
        raise UsageError("--retry-failed and --resubmit-unknown need --journal")
    options = RunOptions(
        out=out,
        endpoint=args.endpoint,
        concurrency=args.concurrency,
        budget=args.budget,
        journal=args.journal,
        max_in_flight=args.max_in_flight,
        timeout=args.timeout,
        emulator=args.emulator,
        retry_failed=args.retry_failed,
        resubmit_unknown=args.resubmit_unknown,
        overwrite=args.overwrite,
        name_template=args.name_template,
        report=args.report,
    )
    reporter = _reporter(args, planned)
    return _loop.run(run_batch, planned, reporter, options)


def _reporter(args: argparse.Namespace, planned: list[Planned]) -> Reporter:
    estimates = {p.key: estimate_cost(p.input).usd for p in planned if p.input is not None}
    progress = Progress(len(planned), estimates)
    verbosity = Verbosity(quiet=args.quiet, verbose=args.verbose)
    records = args.json or not sys.stdout.isatty()
    # The live display goes wherever a person watches: stdout, or stderr when stdout is
    # redirected (`> results.jsonl`) and stderr is still the terminal.
    screen = sys.stderr if records else sys.stdout
    display: Reporter | None = None
    if screen.isatty():
        display = _live(progress, screen, args, verbosity)
    if records:
        return JsonReporter(
            progress, sys.stdout, sys.stderr, args.emulator, args.debug, verbosity, display
        )
    return display or LinesReporter(progress, sys.stdout, args.debug, verbosity)


def _live(
    progress: Progress, screen: TextIO, args: argparse.Namespace, verbosity: Verbosity
) -> Reporter | None:
    try:
        from rich.console import Console

        from ._display import LiveDisplay
    except ImportError:  # no `cli` extra: plain lines still work
        return None
    console = Console(file=screen)
    return LiveDisplay(progress, console, args.debug, verbosity, args.emulator)


def job(name: str, args: argparse.Namespace) -> int:
    """``fal-edit status``, ``logs``, ``result``, ``cancel`` and ``reconcile``."""
    if Credentials.from_env() is None:  # these commands have no --emulator to offer
        raise UsageError(NO_CREDENTIALS_FOR_JOBS)
    return _loop.run(_JOBS[name], args, sys.stdout)


def failure(exc: BaseException, *, debug: bool) -> int:
    """Print one line per error (and the traceback with ``--debug``); return the exit status."""
    leaves = _leaves(exc)
    if any(isinstance(e, SystemExit) for e in leaves):
        raise exc
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    for leaf in leaves:
        print(f"fal-edit: {printable(_message(leaf))}", file=sys.stderr)  # fal's words in it
    if all(isinstance(e, KeyboardInterrupt) for e in leaves):
        return INTERRUPTED
    usage = (UsageError, InputError, AuthError, JournalLockedError)
    return USAGE if any(isinstance(e, usage) for e in leaves) else FAILED


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, AuthError):
        return f"error: {auth_message(exc)}"
    if isinstance(exc, FalEditError):
        rid = getattr(exc, "request_id", None)
        return f"error: {message(exc)}" + (f" (request id {rid})" if rid else "")
    if isinstance(exc, UsageError):
        return f"error: {exc}"
    if isinstance(exc, OSError):
        return f"error: {_os_message(exc)}"
    return f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def _os_message(exc: OSError) -> str:
    """``[Errno 13] Permission denied: PosixPath('x')`` as ``x: permission denied``."""
    what = exc.strerror or str(exc)
    where = exc.filename
    return f"{where}: {what[:1].lower()}{what[1:]}" if where is not None else what
