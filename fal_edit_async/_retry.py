"""Retries: which failures are worth another try, and how long to wait before it.

Backoff is capped exponential with full jitter (a uniform draw between zero and the cap), so a
batch that hits a limit does not come back in lockstep. A ``Retry-After`` from fal wins over
the computed delay, up to ``RetryPolicy.max_retry_after``. ``RetryPolicy(wait=False)`` keeps
every decision but skips the sleeps, for tests.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ._config import RetryPolicy
from ._exceptions import APIError, RateLimitError, TransportError
from ._logging import logger
from ._protocol import is_ingress_error, is_transient
from ._statistics import Counters, RetryKind

__all__ = ["backoff_delay", "retry_delay", "retry_kind", "wait_before_retry", "with_retries"]

T = TypeVar("T")


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter delay before retry number ``attempt`` (0-based)."""
    cap = min(policy.max_delay, policy.base_delay * 2**attempt)
    return (rng or random).uniform(0, cap)


def retry_kind(exc: BaseException, *, submit: bool, policy: RetryPolicy) -> RetryKind | None:
    """The kind of a retryable failure, or None when it must not be retried.

    A submit is retried only when fal cannot have enqueued it: a 429, an ingress 502/503/504
    (no ``x-fal-request-id`` and nginx's page: the queue never saw it), or a connection that
    failed before the request was sent. Anything ambiguous (a reset or timeout after sending,
    a 5xx from fal itself) is retried only when the policy opts in, since a second POST may
    be a second paid job. Other calls are idempotent and retry on 408, 429, 499, 5xx and
    transport errors, except a 504 that reports the caller's own start timeout.
    """
    if isinstance(exc, TransportError):
        if submit and exc.sent and not policy.retry_ambiguous_submit:
            return None
        return "transport"
    if isinstance(exc, RateLimitError):
        return "rate_limit"
    if not isinstance(exc, APIError):
        return None
    if exc.timeout_type == "user":
        return None  # the caller's own start_timeout expired: trying again cannot help
    if submit:
        if is_ingress_error(exc) or (policy.retry_ambiguous_submit and exc.status >= 500):
            return "server_error"
        return None
    if not is_transient(exc.status):
        return None
    return "timeout" if exc.status == 408 else "server_error"


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    submit: bool = False,
    stats: Counters | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[RetryKind], None] | None = None,
    classify: Callable[[Exception], RetryKind | None] | None = None,
) -> T:
    """Await ``call()`` until it succeeds, a failure is not retryable, or attempts run out.

    ``classify`` names the kind of a retryable failure, or None to raise it at once; by
    default :func:`retry_kind` (downloads pass their own). ``on_retry`` hears the kind of
    each failure about to be retried (a batch lowers its concurrency on ``"rate_limit"``).
    """
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if classify is not None:
                kind = classify(exc)
            else:
                kind = retry_kind(exc, submit=submit, policy=policy)
            attempt += 1
            if kind is None or attempt >= policy.max_attempts:
                raise
            if stats is not None:
                stats.retried(kind)
            if on_retry is not None:
                on_retry(kind)
            delay = retry_delay(exc, policy, attempt - 1, rng)
            logger.info(
                "retrying (%s, attempt %d of %d) in %.2f s after: %s",
                kind,
                attempt + 1,
                policy.max_attempts,
                delay if policy.wait else 0.0,
                exc,
            )
            if policy.wait:
                await wait_before_retry(delay)


async def wait_before_retry(delay: float) -> None:
    """Sleep ``delay`` seconds before a retry, or until the caller's deadline if it comes first.

    A wait that would reach the deadline ends in its cancellation anyway: it waits for that
    cancellation, rather than for a sleep that could end in the same instant and send the
    retry just before it (a submit, whose POST is shielded, paid for and then cancelled).
    """
    if delay <= 0:
        return
    if anyio.current_time() + delay < anyio.current_effective_deadline():
        await anyio.sleep(delay)
        return
    with anyio.move_on_after(delay):  # should the deadline be moved meanwhile
        await anyio.Event().wait()


def retry_delay(
    exc: BaseException | None, policy: RetryPolicy, attempt: int, rng: random.Random | None = None
) -> float:
    """How long to wait before retry ``attempt`` (0-based): the server's ``Retry-After``
    when the failure carries one (capped by ``max_retry_after``), else full-jitter backoff."""
    retry_after: float | None = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, policy.max_retry_after)
    return backoff_delay(policy, attempt, rng)
