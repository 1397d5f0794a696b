"""Retry decisions and delays: what is retried, what never is, and how long we wait."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from fal_edit_async import (
    APIError,
    AuthError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TransportError,
    ValidationError,
)
from fal_edit_async._protocol import parse_retry_after
from fal_edit_async._retry import backoff_delay, retry_delay, retry_kind, with_retries
from fal_edit_async._statistics import Counters

POLICY = RetryPolicy(wait=False)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("3", 3.0, id="seconds"),
        pytest.param(" 1.5 ", 1.5, id="fraction"),
        pytest.param("-4", 0.0, id="negative-clamped"),
        pytest.param("Sat, 28 Nov 2026 12:00:10 GMT", 10.0, id="http-date"),
        pytest.param("Sat, 28 Nov 2026 11:59:00 GMT", 0.0, id="date-in-past"),
        pytest.param("soon", None, id="garbage"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Retry-After is read as delta-seconds or as an HTTP date."""
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    assert expected == parse_retry_after(header, now=now)


def test_backoff_is_full_jitter_under_the_cap() -> None:
    """Delays are drawn between zero and min(max_delay, base * 2**attempt)."""
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    rng = random.Random(1)
    for attempt in range(8):
        cap = min(5.0, 2.0**attempt)
        delays = [backoff_delay(policy, attempt, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        pytest.param(3600.0, 120.0, id="an-hour-capped"),
        pytest.param(120.0, 120.0, id="at-the-cap"),
        pytest.param(3.0, 3.0, id="under-the-cap"),
        pytest.param(0.0, 0.0, id="zero"),
    ],
)
def test_retry_after_wins_up_to_max_retry_after(retry_after: float, expected: float) -> None:
    """The server's Retry-After replaces the backoff, but never exceeds max_retry_after."""
    policy = RetryPolicy(base_delay=60.0, max_delay=60.0, max_retry_after=120.0)
    limited = RateLimitError("slow down", status=429, retry_after=retry_after)

    assert expected == retry_delay(limited, policy, 0, random.Random(1))


def _api(cls: type[APIError], status: int, **kw: object) -> APIError:
    return cls("x", status=status, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "submit", "expected"),
    [
        pytest.param(_api(RateLimitError, 429), True, "rate_limit", id="submit-429"),
        pytest.param(
            _api(ServerError, 503, body="<center>nginx</center>"),
            True,
            "server_error",
            id="submit-ingress-503",
        ),
        pytest.param(_api(ServerError, 504), True, None, id="submit-bare-504-unknown"),
        pytest.param(
            _api(ServerError, 502, body={"detail": "Bad Gateway"}),
            True,
            None,
            id="submit-json-502-unknown",
        ),
        pytest.param(_api(ServerError, 503, request_id="r"), True, None, id="submit-503-from-fal"),
        pytest.param(_api(ServerError, 500), True, None, id="submit-500"),
        pytest.param(TransportError("x", sent=False), True, "transport", id="submit-not-sent"),
        pytest.param(TransportError("x", sent=True), True, None, id="submit-ambiguous"),
        pytest.param(_api(ValidationError, 422), True, None, id="submit-422"),
        pytest.param(_api(AuthError, 401), False, None, id="status-401"),
        pytest.param(_api(APIError, 408), False, "timeout", id="status-408"),
        pytest.param(
            _api(ServerError, 500, request_id="r"), False, "server_error", id="status-500"
        ),
        pytest.param(
            _api(ServerError, 504, timeout_type="user"), False, None, id="status-user-timeout"
        ),
        pytest.param(TransportError("x", sent=True), False, "transport", id="status-reset"),
        pytest.param(_api(APIError, 400), False, None, id="status-400"),
    ],
)
def test_retry_kind(exc: Exception, submit: bool, expected: str | None) -> None:
    """Submits retry only where fal cannot have enqueued; other calls retry transients."""
    assert expected == retry_kind(exc, submit=submit, policy=POLICY)


def test_ambiguous_submit_retried_only_when_opted_in() -> None:
    """retry_ambiguous_submit=True makes a reset after sending retryable for a submit."""
    policy = RetryPolicy(wait=False, retry_ambiguous_submit=True)
    assert "transport" == retry_kind(TransportError("x", sent=True), submit=True, policy=policy)


async def test_with_retries_counts_and_caps() -> None:
    """with_retries stops at max_attempts and counts each retry by kind."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise ServerError("boom", status=502)

    stats = Counters()
    with pytest.raises(ServerError):
        await with_retries(flaky, policy=RetryPolicy(wait=False, max_attempts=4), stats=stats)
    assert 4 == calls
    assert {"server_error": 3} == stats.snapshot().retries.as_dict()


async def test_with_retries_returns_first_success() -> None:
    """A call that recovers returns its value after the failed attempts."""
    answers = iter([TransportError("reset"), RateLimitError("slow", status=429), "ok"])

    async def call() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert "ok" == await with_retries(call, policy=POLICY)
