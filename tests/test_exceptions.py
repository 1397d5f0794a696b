"""The error tree: its shape, each error's message and attributes, and fal's error bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import fal_edit_async
from fal_edit_async import (
    APIError,
    AuthError,
    BudgetExceededError,
    DownloadError,
    FalEditError,
    InputError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
    _exceptions,
)
from fal_edit_async._exceptions import describe_detail, field_errors_of

DATA = Path(__file__).parent / "data"
RID = "764cabcf-b745-4b3e-ae38-1200304cf45b"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        pytest.param(FalEditError, Exception, id="FalEditError"),
        pytest.param(InputError, FalEditError, id="InputError"),
        pytest.param(InputError, ValueError, id="InputError-is-ValueError"),
        pytest.param(TransportError, FalEditError, id="TransportError"),
        pytest.param(APIError, FalEditError, id="APIError"),
        pytest.param(AuthError, APIError, id="AuthError"),
        pytest.param(NotFoundError, APIError, id="NotFoundError"),
        pytest.param(RateLimitError, APIError, id="RateLimitError"),
        pytest.param(ValidationError, APIError, id="ValidationError"),
        pytest.param(ServerError, APIError, id="ServerError"),
        pytest.param(ProtocolError, FalEditError, id="ProtocolError"),
        pytest.param(JobFailedError, FalEditError, id="JobFailedError"),
        pytest.param(JobCancelledError, FalEditError, id="JobCancelledError"),
        pytest.param(JobTimeoutError, FalEditError, id="JobTimeoutError"),
        pytest.param(JobTimeoutError, TimeoutError, id="JobTimeoutError-is-TimeoutError"),
        pytest.param(DownloadError, FalEditError, id="DownloadError"),
        pytest.param(BudgetExceededError, FalEditError, id="BudgetExceededError"),
    ],
)
def test_error_tree(cls: type[BaseException], parent: type[BaseException]) -> None:
    """Each error sits where the tree in the module docstring draws it."""
    assert issubclass(cls, parent)


@pytest.mark.parametrize("name", _exceptions.__all__)
def test_module_docstring_draws_every_error(name: str) -> None:
    """The tree in the module docstring names every exported error, so it cannot drift."""
    assert name in (_exceptions.__doc__ or "")
    assert getattr(fal_edit_async, name) is getattr(_exceptions, name)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        pytest.param(InputError("num_images", 5, "an integer from 1 to 4"),
                     "num_images: invalid value 5; expected an integer from 1 to 4", id="input"),
        pytest.param(TransportError("connection reset"), "connection reset", id="transport"),
        pytest.param(TransportError("connection reset", url="https://queue.fal.run/x"),
                     "connection reset (https://queue.fal.run/x)", id="transport-with-url"),
        pytest.param(APIError("Internal Server Error", status=500),
                     "HTTP 500: Internal Server Error", id="api"),
        pytest.param(ServerError("Request timed out", status=504, error_type="request_timeout",
                                 request_id=RID),
                     f"HTTP 504, request_timeout: Request timed out (request_id={RID})",
                     id="server-with-type-and-request-id"),
        pytest.param(RateLimitError("Too Many Requests", status=429, retry_after=2.5),
                     "HTTP 429: Too Many Requests", id="rate-limit"),
        pytest.param(ProtocolError("unexpected status payload"), "unexpected status payload",
                     id="protocol"),
        pytest.param(ProtocolError("unexpected payload", details=["a @ $.x", "b @ $.y"]),
                     "unexpected payload: a @ $.x; b @ $.y", id="protocol-with-details"),
        pytest.param(JobFailedError(request_id=RID, error=None), f"job failed (request_id={RID})",
                     id="job-failed-bare"),
        pytest.param(JobFailedError(request_id=RID, error="Runner disconnected",
                                    error_type="runner_disconnected"),
                     f"Runner disconnected [runner_disconnected] (request_id={RID})",
                     id="job-failed-with-type"),
        pytest.param(JobFailedError(request_id=RID, error="Invalid status code: 422",
                                    detail=load("error_422.json"), status=422),
                     f"Invalid status code: 422: prompt: field required (request_id={RID})",
                     id="job-failed-with-422-detail"),
        pytest.param(JobCancelledError(RID), f"job was cancelled (request_id={RID})",
                     id="cancelled"),
        pytest.param(JobTimeoutError(RID, 30), f"no result within 30 s (request_id={RID})",
                     id="timeout"),
        pytest.param(JobTimeoutError(None, 2.5), "no result within 2.5 s", id="timeout-no-id"),
        pytest.param(DownloadError("HTTP 404"), "HTTP 404", id="download"),
        pytest.param(DownloadError("HTTP 404", url="https://v3.fal.media/files/a.png"),
                     "HTTP 404 (https://v3.fal.media/files/a.png)", id="download-with-url"),
        pytest.param(BudgetExceededError(estimate=0.25, spent=9.9, budget=10),
                     "estimated $0.250 on top of $9.900 would cross the $10.00 budget",
                     id="budget"),
    ],
)  # fmt: skip
def test_error_messages(error: FalEditError, message: str) -> None:
    """Each error's message is one readable line with the request id when there is one."""
    assert message == str(error)


def test_api_error_attributes() -> None:
    """APIError keeps the status, body, request id and error type it was raised with."""
    body = load("error_request_timeout.json")

    error = ServerError("Request timed out", status=504, body=body, request_id=RID,
                        error_type="request_timeout")  # fmt: skip

    assert (504, body, RID, "request_timeout") == (
        error.status,
        error.body,
        error.request_id,
        error.error_type,
    )


@pytest.mark.parametrize("retry_after", [None, 0.0, 12.5])
def test_rate_limit_error_keeps_retry_after(retry_after: float | None) -> None:
    """RateLimitError carries fal's Retry-After in seconds, or None when fal did not say."""
    error = RateLimitError("slow down", status=429, retry_after=retry_after)

    assert (retry_after, 429) == (error.retry_after, error.status)


def test_job_failed_error_attributes() -> None:
    """JobFailedError keeps everything needed to report and retry the job."""
    error = JobFailedError(
        request_id=RID, error="e", error_type="t", detail={"detail": "x"}, status=503,
        logs=("line",), retryable=True,
    )  # fmt: skip

    assert (RID, "e", "t", {"detail": "x"}, 503, ["line"], True) == (
        error.request_id,
        error.error,
        error.error_type,
        error.detail,
        error.status,
        error.logs,
        error.retryable,
    )


def test_job_timeout_error_is_caught_as_timeout_error() -> None:
    """Code that catches the built-in TimeoutError also catches JobTimeoutError."""
    with pytest.raises(TimeoutError) as caught:
        raise JobTimeoutError(RID, 1.0)

    assert (RID, 1.0) == (caught.value.request_id, caught.value.timeout)  # type: ignore[attr-defined]


def test_download_error_shortens_data_uris() -> None:
    """A data: URI in a DownloadError is cut short instead of filling the message."""
    uri = "data:image/png;base64," + "A" * 10_000

    error = DownloadError("not an image", url=uri)

    assert uri == error.url
    assert len(str(error)) < 100
    assert str(error).startswith("not an image (data:image/png;base64,")


def test_validation_error_lists_field_errors() -> None:
    """A 422 body's ``detail`` list becomes ValidationError.field_errors."""
    error = ValidationError("Unprocessable Entity", status=422, body=load("error_422.json"))

    assert [
        {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
    ] == error.field_errors


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(load("error_422.json"), load("error_422.json")["detail"], id="detail-list"),
        pytest.param(
            {"detail": "prompt is too long"},
            [{"loc": [], "msg": "prompt is too long", "type": "value_error"}],
            id="detail-string",
        ),
        pytest.param({"detail": [{"msg": "ok"}, "junk", 3]}, [{"msg": "ok"}], id="junk-dropped"),
        pytest.param({"error": "x"}, [], id="no-detail"),
        pytest.param("Internal Server Error", [], id="text-body"),
        pytest.param(None, [], id="no-body"),
    ],
)
def test_field_errors_of(body: Any, expected: list[Any]) -> None:
    """field_errors_of normalises every shape of fal error body to a list of field errors."""
    assert expected == field_errors_of(body)


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        pytest.param(load("error_422.json"), "prompt: field required", id="field-error"),
        pytest.param(
            {"detail": [{"loc": ["body"], "msg": "bad json"}, {"loc": ["body", "image_urls", 0],
             "msg": "not a URL"}]},
            "bad json; image_urls.0: not a URL",
            id="several-field-errors",
        ),
        pytest.param(load("error_request_timeout.json"), "Request timed out", id="request-error"),
        pytest.param(load("error_still_in_progress.json"), "Request is still in progress",
                     id="still-in-progress"),
        pytest.param({"detail": {"code": 7}}, "{'code': 7}", id="detail-object"),
        pytest.param("Bad Gateway", "'Bad Gateway'", id="text"),
    ],
)  # fmt: skip
def test_describe_detail(detail: Any, expected: str) -> None:
    """describe_detail gives one line for any fal error body."""
    assert expected == describe_detail(detail)


def test_describe_detail_shortens_huge_bodies() -> None:
    """An unrecognised huge body is cut to a few hundred characters."""
    text = describe_detail("<html>" + "x" * 10_000)

    assert len(text) <= 300
    assert text.endswith("...")


def test_a_message_kept_with_its_request_id_is_not_given_it_twice() -> None:
    """atk28 F3: a rerun's lost-submit error, made from the journal's message, read
    "... (request_id=X) (request_id=X)"."""
    from fal_edit_async import UnknownSubmitError

    kept = UnknownSubmitError("HTTP 500: boom (request_id=r1)", request_id="r1")
    assert str(kept).count("request_id=r1") == 1
