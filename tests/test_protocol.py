"""The queue protocol's pure parts: URLs, submit headers, answers turned into errors."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, given, strategies as st
from multidict import CIMultiDict

from fal_edit_async import (
    APIError,
    AuthError,
    CancelOutcome,
    EndpointId,
    InputError,
    JobUrls,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmitReceipt,
    ValidationError,
)
from fal_edit_async._protocol import (
    api_error,
    cancel_outcome,
    job_urls,
    origin,
    same_origin,
    submit_headers,
    trusted_job_urls,
    urls_from_receipt,
)

EDIT = EndpointId.parse("fal-ai/gpt-image-1/edit-image")


def test_built_urls_drop_the_sub_path() -> None:
    """Re-attached jobs live under owner/alias/requests/<id>, without the sub-path."""
    urls = job_urls("https://queue.fal.run", EDIT, "abc")
    assert "https://queue.fal.run/fal-ai/gpt-image-1/requests/abc/status" == urls.status_url
    assert "https://queue.fal.run/fal-ai/gpt-image-1/requests/abc" == urls.response_url
    assert "https://queue.fal.run/fal-ai/gpt-image-1/requests/abc/cancel" == urls.cancel_url
    assert urls.stream_url.endswith("/requests/abc/status/stream")


@pytest.mark.parametrize(
    ("request_id", "segment"),
    [
        ("abc#1", "abc%231"),
        ("a?b=c", "a%3Fb%3Dc"),
        ("a b%", "a%20b%25"),
        ("caf\u00e9", "caf%C3%A9"),
        ("764cabcf-b745-4b3e-ae38-1200304cf45b", "764cabcf-b745-4b3e-ae38-1200304cf45b"),
    ],
)
def test_request_ids_are_percent_encoded_in_job_urls(request_id: str, segment: str) -> None:
    """A '#' or '?' in an id must not cut the path short: it is one encoded path segment."""
    urls = job_urls("https://q", EDIT, request_id)
    base = f"https://q/fal-ai/gpt-image-1/requests/{segment}"
    assert (base, base + "/status", base + "/cancel") == (
        urls.response_url,
        urls.status_url,
        urls.cancel_url,
    )
    assert request_id == urls.request_id


@pytest.mark.parametrize("request_id", ["", "a/b", "..", "."])
def test_bad_request_ids_are_input_errors(request_id: str) -> None:
    """A request id that would change the URL's path is refused before any request."""
    with pytest.raises(InputError, match="request_id"):
        job_urls("https://queue.fal.run", EDIT, request_id)


def _receipt(base: str) -> SubmitReceipt:
    """A receipt for job r1 whose URLs all stem from ``base`` (its result URL)."""
    return SubmitReceipt(
        request_id="r1", response_url=base, status_url=f"{base}/status", cancel_url=f"{base}/cancel"
    )


def test_receipt_urls_used_when_they_are_this_jobs_on_the_queue() -> None:
    """The server's URLs are used verbatim when they are this job's on the queue host (the
    endpoint's app, with or without its sub-path); under another app's path they are not
    (atk26 F1: fal answers a JSON 404 there, read as an expired result)."""
    receipt = _receipt("http://127.0.0.1:9/fal-ai/gpt-image-1/edit-image/requests/r1")
    assert receipt.status_url == urls_from_receipt("http://127.0.0.1:9", EDIT, receipt).status_url
    built = urls_from_receipt(
        "http://127.0.0.1:9", EDIT, _receipt("http://127.0.0.1:9/x/y/requests/r1")
    )
    assert "http://127.0.0.1:9/fal-ai/gpt-image-1/requests/r1/status" == built.status_url


def test_receipt_urls_on_another_origin_are_not_trusted() -> None:
    """A receipt naming another host is replaced by locally built URLs, so the key stays."""
    urls = urls_from_receipt(
        "https://queue.fal.run", EDIT, _receipt("https://evil.example/requests/r1")
    )
    assert urls.status_url.startswith("https://queue.fal.run/fal-ai/gpt-image-1/")


def test_origin_normalises_default_ports_and_case() -> None:
    """Origins compare scheme, host and port, with default ports filled in."""
    assert origin("https://Queue.fal.run/x") == origin("https://queue.fal.run:443/y")
    assert origin("http://127.0.0.1:80/") != origin("http://127.0.0.1:81/")


def test_submit_headers_are_validated_and_formatted() -> None:
    """Priority, hint and start timeout become fal's headers, formatted as fal-client does."""
    headers = submit_headers(priority="low", hint="gpu-a", start_timeout=30, headers={"X-A": "1"})
    assert {
        "X-A": "1",
        "X-Fal-Queue-Priority": "low",
        "X-Fal-Runner-Hint": "gpu-a",
        "X-Fal-Request-Start-Timeout": "30.0",
        "X-Fal-Request-Timeout": "30.0",
    } == headers


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"priority": "high"}, "priority", id="priority"),
        pytest.param({"start_timeout": 1}, "start_timeout", id="timeout-too-small"),
        pytest.param({"start_timeout": True}, "start_timeout", id="timeout-bool"),
        pytest.param({"hint": ""}, "hint", id="empty-hint"),
        pytest.param({"headers": {"authorization": "Key x"}}, "headers", id="auth-header"),
        pytest.param({"headers": {"X-A": "a\0b"}}, "headers", id="nul-in-header-value"),
        pytest.param({"headers": {"X A": "1"}}, "headers", id="space-in-header-name"),
        pytest.param({"headers": {"X-A": 1}}, "headers", id="header-value-not-a-string"),
        pytest.param({"hint": "a\0b"}, "hint", id="nul-in-hint"),
    ],
)
def test_bad_submit_options(kwargs: dict[str, object], field: str) -> None:
    """Bad submit options raise InputError naming the option."""
    with pytest.raises(InputError) as info:
        submit_headers(**kwargs)  # type: ignore[arg-type]
    assert field == info.value.field


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (422, ValidationError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (400, APIError),
    ],
)
def test_api_error_classes(status: int, cls: type[APIError]) -> None:
    """Each status maps to its error class, carrying status, body and request id."""
    headers = CIMultiDict({"x-fal-request-id": "req-9"})
    err = api_error(status, headers, b'{"detail": "nope"}')
    assert type(err) is cls
    assert (status, {"detail": "nope"}, "req-9") == (err.status, err.body, err.request_id)
    assert "req-9" in str(err)


def test_auth_error_tells_the_user_what_to_do() -> None:
    """A 401 message names FAL_KEY."""
    assert "FAL_KEY" in str(api_error(401, CIMultiDict(), b'{"detail":"Unauthorized"}'))


def test_validation_error_lists_fields() -> None:
    """A 422 detail list is summarised as loc: msg and exposed as field_errors."""
    body = b'{"detail":[{"loc":["body","prompt"],"msg":"field required","type":"missing"}]}'
    err = api_error(422, CIMultiDict(), body)
    assert isinstance(err, ValidationError)
    assert "prompt: field required" in str(err)
    assert "prompt" == err.field_errors[0]["loc"][1]


def test_rate_limit_reads_retry_after_and_error_type() -> None:
    """429 carries Retry-After; error_type comes from the body or X-Fal-Error-Type."""
    err = api_error(429, CIMultiDict({"Retry-After": "2", "X-Fal-Error-Type": "x"}), b"")
    assert isinstance(err, RateLimitError)
    assert (2.0, "x") == (err.retry_after, err.error_type)


def test_non_json_error_body_is_kept_as_text() -> None:
    """An nginx HTML page becomes the message text rather than a JSON error."""
    err = api_error(502, CIMultiDict(), b"<html>502 Bad Gateway nginx</html>")
    assert "nginx" in str(err)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (202, b'{"status":"CANCELLATION_REQUESTED"}', CancelOutcome.REQUESTED),
        (200, b'{"status":"OK"}', CancelOutcome.OK),
        (400, b'{"status":"ALREADY_COMPLETED"}', CancelOutcome.ALREADY_COMPLETED),
        (404, b'{"status":"NOT_FOUND"}', CancelOutcome.NOT_FOUND),
    ],
)
def test_cancel_outcomes(status: int, body: bytes, expected: CancelOutcome) -> None:
    """fal's cancel answers become outcomes; 400 and 404 are not errors here."""
    assert expected == cancel_outcome(status, CIMultiDict(), body)


def test_cancel_other_errors_raise() -> None:
    """A cancel answered 401 raises the auth error."""
    with pytest.raises(AuthError):
        cancel_outcome(401, CIMultiDict(), b'{"detail":"no"}')


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("https://queue.fal.run/fal-ai/x/requests/1", True, id="under-base"),
        pytest.param("https://QUEUE.fal.run:443/other", True, id="same-origin-other-spelling"),
        pytest.param("https://queue.fal.run.evil.com/x", False, id="lookalike-host"),
        pytest.param("https://queue.fal.run@evil.com/x", False, id="userinfo-trick"),
        pytest.param("http://queue.fal.run/x", False, id="other-scheme"),
        pytest.param("https://queue.fal.run:8443/x", False, id="other-port"),
    ],
)
def test_same_origin(url: str, expected: bool) -> None:
    """The key-scoping check: a fast prefix match, and a real origin comparison otherwise."""
    assert expected == same_origin(url, "https://queue.fal.run")


# -- job URLs must name their job (atk24 F2) ------------------------------------------------

_ID = "7f1c2a9e-3b4d-4e5f-8a6b-1c2d3e4f5a6b"
_OTHER = "00000000-0000-4000-8000-000000000000"
_BASE = "http://127.0.0.1:9/fal-ai/gpt-image-1/requests"


def _urls(status: str, response: str, cancel: str, request_id: str = _ID) -> JobUrls:
    return JobUrls(
        request_id=request_id, status_url=status, response_url=response, cancel_url=cancel
    )


@pytest.mark.parametrize(
    "status",
    [
        f"{_BASE}/{_OTHER}/status",  # another job's
        f"{_BASE}/{_ID}/../{_OTHER}/status",  # resolved away before sending
        f"{_BASE}/{_ID}/%2E%2E/{_OTHER}/status",
        f"{_BASE}/{_OTHER}/status?x=/requests/{_ID}/status",  # the id in the query only
        f"{_BASE}/{_ID}x/status",  # an id that merely starts with this one
        f"{_BASE}/{_ID}/status/",
        f"{_BASE}/{_ID}/status\u00a0",  # non-ASCII whitespace, where parsers part ways
        f"{_BASE}/{_ID}",  # the result's URL, not the status's
        f"http://127.0.0.1:9/other/app/requests/{_ID}/status",  # another app's: fal's 404
        f"http://127.0.0.1:9/x{_BASE[len('http://127.0.0.1:9') :]}/{_ID}/status",  # a prefix
    ],
)
def test_a_job_url_that_does_not_end_in_its_own_job_is_rebuilt(status: str) -> None:
    given = _urls(status, f"{_BASE}/{_ID}", f"{_BASE}/{_ID}/cancel")
    rebuilt = trusted_job_urls("http://127.0.0.1:9", EDIT, given)
    assert f"{_BASE}/{_ID}/status" == rebuilt.status_url


def test_fals_own_job_urls_are_kept_with_or_without_the_sub_path() -> None:
    for base in (_BASE, "http://127.0.0.1:9/fal-ai/gpt-image-1/edit-image/requests"):
        for response in (f"{base}/{_ID}", f"{base}/{_ID}/response"):
            given = _urls(f"{base}/{_ID}/status", response, f"{base}/{_ID}/cancel")
            assert given == trusted_job_urls("http://127.0.0.1:9", EDIT, given)


@given(
    st.text(min_size=1, max_size=40),
    st.lists(st.text(max_size=30), min_size=3, max_size=3),
)
def test_job_urls_kept_or_built_always_end_in_their_job(request_id: str, paths: list[str]) -> None:
    """Whatever a server or a journal says, the URLs followed end in ``/requests/<id>``
    and the route's suffix, and hold nothing a parser could read apart."""
    assume(_usable(request_id))
    given = _urls(*(f"http://127.0.0.1:9/{p}" for p in paths), request_id=request_id)
    urls = trusted_job_urls("http://127.0.0.1:9", EDIT, given)
    segment = quote(request_id, safe="-._~")
    assert urls.status_url.endswith(f"/requests/{segment}/status") or urls.status_url.endswith(
        f"/requests/{request_id}/status"
    )
    for url in (urls.status_url, urls.response_url, urls.cancel_url):
        assert url.isascii() and "#" not in url and "?" not in url and "/../" not in url


def _usable(request_id: str) -> bool:
    try:
        job_urls("http://127.0.0.1:9", EDIT, request_id)
    except InputError:
        return False
    return True


def test_an_empty_error_body_says_so_once() -> None:
    """atk27: a proxy's bare 499 read "HTTP 499: HTTP 499"; the status is said once."""
    assert "HTTP 499: no body (a proxy's 'client closed request')" == str(api_error(499, {}, b""))
    assert "HTTP 502: no body" == str(api_error(502, {}, b""))
