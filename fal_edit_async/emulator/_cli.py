"""``python -m fal_edit_async.emulator``: serve the emulator in the foreground until a signal.

:func:`add_arguments` and :func:`run` let another CLI (``fal-edit emulator``) reuse the same
options; :func:`main` is the standalone entry point. Adding the options loads neither the
server nor asyncio (``fal-edit --help`` builds this parser); :func:`run` loads them.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from ._faults import MODEL_FAILURE_KINDS, Faults

if TYPE_CHECKING:  # the server (aiohttp, Pillow) loads when one is started, not for --help
    from ._emulator import Emulator
    from ._engine import CancelRunning

__all__ = ["add_arguments", "main", "run"]

_RATES = (
    ("rate_limit", "429 with Retry-After"),
    ("server_error", "5xx from fal itself"),
    ("ingress_error", "502 nginx page without x-fal-request-id"),
    ("connection_reset", "drop the connection without an answer"),
    ("server_error_after_queue", "queue the submit, then answer 5xx naming the job"),
    ("gateway_timeout_after_queue", "queue the submit, then answer a bare 504"),
    ("slow_response", "delay the answer by --slow-delay seconds"),
    ("stream_drop", "end status streams before COMPLETED"),
    ("refuse_stream", "answer status streams with 405"),
    ("truncated_download", "send half of a download, then close"),
    ("result_in_progress", "answer a completed job's result 400 still in progress"),
    ("model_failure", "end jobs with a model error (--model-failure-kind)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="queue/REST port (default: any)")
    parser.add_argument("--cdn-port", type=_port, default=0, help="CDN port (default: any)")
    parser.add_argument("--workers", type=_positive, default=4, help="jobs run at once (default 4)")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="print a line per request it answers"
    )
    parser.add_argument(
        "--processing-time", type=float, default=1.0, help="seconds each job runs (default 1.0)"
    )
    parser.add_argument("--log-lines", type=int, default=3, help="log lines per job")
    parser.add_argument(
        "--api-key",
        default=None,
        help="the only key accepted (default: a random one, printed at start)",
    )
    parser.add_argument(
        "--fast-images", action="store_true", help="serve cached placeholder images (benchmarks)"
    )
    parser.add_argument(
        "--output-bytes", type=int, default=None, help="pad output images to about this many bytes"
    )
    parser.add_argument("--seed", type=int, default=0, help="fault RNG seed (default 0)")
    for name, text in _RATES:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=_rate,
            default=0.0,
            metavar="R",
            help=f"rate 0..1: {text}",
        )
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds")
    parser.add_argument("--slow-delay", type=float, default=1.0, help="slow_response seconds")
    parser.add_argument(
        "--model-failure-kind",
        default="validation",
        choices=sorted(MODEL_FAILURE_KINDS),
        metavar="KIND",
        help="error of failed jobs: validation (422) or a fal error type such as "
        "runner_disconnected (default validation)",
    )
    parser.add_argument(
        "--no-retryable-header",
        dest="retryable_header",
        action="store_false",
        help="leave X-Fal-Retryable out of failed results (clients judge by error type)",
    )
    parser.add_argument(
        "--cancel-running",
        type=_cancel_running,
        default="honour",
        metavar="MODE",
        help="cancels of running jobs: honour (default), ignore (the job runs on and bills), "
        "or a probability 0..1 of ignoring each",
    )
    parser.add_argument(
        "--result-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="forget each result this long after its job completed; status and result then "
        "answer 404 (fal: about 3600, or 360 for results of 10 KB or more; default: never)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text}")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate must be from 0 to 1, got {text}")
    return value


def _cancel_running(text: str) -> CancelRunning:
    if text == "honour":
        return "honour"
    if text == "ignore":
        return "ignore"
    from ._engine import cancel_ignore_rate

    try:
        return cancel_ignore_rate(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected honour, ignore or a probability from 0 to 1, got {text!r}"
        ) from None


def _emulator(args: argparse.Namespace) -> Emulator:
    from ._emulator import Emulator

    rates = {name: getattr(args, name) for name, _ in _RATES}
    faults = Faults(
        seed=args.seed,
        retry_after=args.retry_after,
        slow_delay=args.slow_delay,
        model_failure_kind=args.model_failure_kind,
        **rates,
    )
    return Emulator(
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        workers=args.workers,
        processing_time=args.processing_time,
        log_lines=args.log_lines,
        # A key is printed, so it is the one required: a banner never shows a key that does
        # not matter, and a client without it fails here as it would on fal.
        api_key=args.api_key or "emulator-" + secrets.token_hex(8),
        fast_images=args.fast_images,
        output_bytes=args.output_bytes,
        faults=faults,
        retryable_header=args.retryable_header,
        cancel_running=args.cancel_running,
        result_ttl=args.result_ttl,
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Serve until SIGINT or SIGTERM; print the URLs and key first. Returns the exit code."""
    try:
        emulator = _emulator(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use, an address not ours
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    from ._serve import serve  # asyncio, only once there is something to serve

    try:
        return serve(emulator, out or sys.stdout, verbose=args.verbose)
    except OSError as exc:
        print(f"error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve; the ``python -m fal_edit_async.emulator`` entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m fal_edit_async.emulator",
        description="Serve a local fal-compatible emulator (queue, storage, CDN) until "
        "Ctrl-C. It prints export lines for FAL_QUEUE_URL, FAL_REST_URL (storage uploads, "
        "used for files over 256 KiB), FAL_API_URL (the request history a journal's lost "
        "submits are looked up in) and FAL_KEY that point a client at it.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
