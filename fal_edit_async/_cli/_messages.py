"""Errors in words a person at the terminal can act on: plain paths, sizes in MB, known
options named, and for each failed item what to do next.

The library's messages are written for programmers (``PosixPath('a.jpg')``, ``52428800
bytes``, ``expected no such field``); the command line says the same things plainly.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import PurePath

from .. import (
    AuthError,
    BudgetExceededError,
    DownloadError,
    InputError,
    ItemResult,
    ItemState,
    JobCancelledError,
    JobFailedError,
    JournalError,
    UnknownSubmitError,
)

__all__ = ["SKIPPED", "PlainInputError", "cause", "megabytes", "message", "next_step", "outcome"]

#: The outcome of an item an earlier run recorded as failed, which this run did not retry.
SKIPPED = "skipped"
_BYTES = re.compile(r"\b(\d{4,}) bytes\b")
_STATUS_CODE = re.compile(r"^Invalid status code: (\d{3}):?\s*")
_REQUEST_ID = re.compile(r" \(request_id=[^)]*\)")


class PlainInputError(InputError):
    """An input error whose text is already written for a person (a manifest line's)."""

    def __init__(self, field: str, value: object, text: str) -> None:
        super().__init__(field, value, text)
        self.args = (text,)

    def __str__(self) -> str:
        return self.allowed


def megabytes(n: int) -> str:
    """``52428800`` as ``50 MB`` (MiB, as file managers show them)."""
    mb = n / 2**20
    return f"{mb:.0f} MB" if mb >= 10 or mb == int(mb) else f"{mb:.1f} MB"


def _value(value: object) -> str:
    if isinstance(value, PurePath | os.PathLike):
        return os.fspath(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def message(exc: BaseException) -> str:
    """One plain line for an error (no request id: callers show it apart when they need it)."""
    if isinstance(exc, PlainInputError):
        return str(exc)
    if isinstance(exc, InputError):
        return _input_message(exc)
    if isinstance(exc, JobFailedError):
        text = exc.error or "the job failed"
        match = _STATUS_CODE.match(text)
        if match:  # fal's text for a refused job; the status code is the useful part
            text = f"fal refused the job (HTTP {match[1]})" + (
                f": {text[match.end() :]}" if text[match.end() :] else ""
            )
        rest = str(exc).removeprefix(exc.error or "job failed")
        rest = _REQUEST_ID.sub("", rest)
        if exc.error_type:
            rest = rest.replace(f" [{exc.error_type}]", "", 1)
        return _BYTES.sub(lambda m: megabytes(int(m[1])), text + rest)
    return _REQUEST_ID.sub("", _BYTES.sub(lambda m: megabytes(int(m[1])), str(exc)))


def _input_message(exc: InputError) -> str:
    allowed = exc.allowed
    if allowed.startswith("no such field"):
        known = allowed.partition("known: ")[2].split(", ")
        close = difflib.get_close_matches(exc.field, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown option {exc.field!r}{hint} (options: {', '.join(known)})"
    allowed = _BYTES.sub(lambda m: megabytes(int(m[1])), allowed)
    return f"{exc.field}: {_value(exc.value)} is not {allowed}"


def outcome(result: ItemResult, *, submitted: bool) -> str:
    """What became of an item, in the panel's words: done, failed, cancelled, not submitted,
    skipped, unknown or interrupted. ``submitted``: this run sent (or re-attached) a job."""
    if result.state is ItemState.FAILED and result.resumed and not submitted:
        if isinstance(result.error, JobFailedError):
            return SKIPPED  # an earlier run's verdict, replayed from the journal
    return {
        ItemState.COMPLETED: "done",
        ItemState.FAILED: "failed",
        ItemState.CANCELLED: "cancelled",
        ItemState.NOT_SUBMITTED: "not submitted",
        ItemState.UNKNOWN: "unknown",
        ItemState.INTERRUPTED: "interrupted",
    }[result.state]


def cause(error: BaseException) -> str:
    """A short cause shared by items that failed the same way (``over budget``,
    ``content_policy_violation``, ``invalid input``)."""
    if isinstance(error, BudgetExceededError):
        return "over budget"
    if isinstance(error, JobFailedError):
        return error.error_type or _field_error_type(error.detail) or "job failed"
    if isinstance(error, InputError):
        return "invalid input"
    if isinstance(error, JobCancelledError):
        return "cancelled"
    if isinstance(error, UnknownSubmitError):
        return "submit answer lost"
    if isinstance(error, DownloadError):
        return "download failed"
    if isinstance(error, AuthError):
        return "key refused"
    return type(error).__name__


def next_step(result: ItemResult, state: str, *, journal: bool, line: int | None) -> str:
    """What to do about an item that did not finish."""
    error, rid = result.error, result.request_id or "REQUEST_ID"
    again = "run again with the same --journal" if journal else "run again"
    if state == SKIPPED:
        return "an earlier run's verdict: add --retry-failed to submit it again"
    if state == "unknown":
        if isinstance(error, UnknownSubmitError) and error.ambiguous:
            return (
                "two or more jobs on fal may be this item's, so it is never submitted again "
                "(not even with --resubmit-unknown): `fal-edit reconcile JOURNAL --json` "
                "names them"
            )
        if isinstance(error, JournalError):  # its row names a job another row names too
            return "fix the journal rows the error names, or restore the journal from a copy"
        look = f" (`fal-edit status {rid}`)" if result.request_id else ""
        find = "; `fal-edit reconcile JOURNAL` looks for it in fal's history" if journal else ""
        return (
            "not retried, since fal may have queued (and will bill) it and a second submit "
            f"would pay twice{look}{find}; --resubmit-unknown submits it again"
        )
    if state == "interrupted":
        if journal:
            # Grouped ("12 items interrupted: ..."): a step that reads for one item or many.
            return "run again with the same --journal: it picks up where this run stopped"
        return f"`fal-edit result {rid} --out DIR` fetches it"
    if state == "cancelled":
        return f"cancelled on fal: {again} to submit again"
    if isinstance(error, BudgetExceededError):
        return f"raise --budget (it is ${error.budget:.2f}) and {again}"
    if isinstance(error, JournalError):
        return "free space for the journal (or fix its folder), then run again"
    if isinstance(error, InputError):
        return f"fix line {line} of the manifest" if line else "fix the input"
    if isinstance(error, AuthError):
        return "check FAL_KEY"
    if isinstance(error, DownloadError):
        return f"fal finished it: {again}, or `fal-edit result {rid} --out DIR`"
    if isinstance(error, JobFailedError):
        if (error.status is not None and 400 <= error.status < 500) or error.error_type in (
            "content_policy_violation",
            "value_error",
        ):
            return "fal refused it: change the prompt or the image"
        if journal:
            return "add --retry-failed to the same command to submit it again"
        return "run it again (with --journal, a rerun pays only for what failed)"
    return again


def _field_error_type(body: object) -> str | None:
    """The first field error type in a fal error body; a string ``detail`` is a value_error."""
    # JobFailedError.detail is the raw body: read the 422 shape from it here rather than make
    # the library's helper for it public just for this summary line.
    detail = body.get("detail") if isinstance(body, Mapping) else None
    if isinstance(detail, str):
        return "value_error"
    entries = detail if isinstance(detail, list) else []
    types = (entry.get("type") for entry in entries if isinstance(entry, Mapping))
    return next((str(t) for t in types if t), None)
