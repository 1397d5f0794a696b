"""Raw status updates for one job: the SSE status stream, with polling as the fallback.

:func:`raw_statuses` yields every status payload it receives, as parsed models, until one is
COMPLETED. It prefers fal's server-sent events stream; it reconnects a dropped stream, and
falls back to polling for the rest of the job when the stream is refused (404, 405, 501, not
``text/event-stream``), sends an event larger than ``Limits.max_event_bytes``, or drops
``Polling.stream_failures`` times in a row without progress. A stream sending keep-alive
comments but no event for ``Timeouts.stream_idle`` counts as dropped, as a silent one does.
Any 2xx opens the stream, as in the official clients (fal's status answers 202 while a job
runs).

A status value this client does not know counts as "still running", for at most
``Polling.max_unknown_statuses`` updates in a row; then a :class:`ProtocolError` ends the
wait (the job stays re-attachable), so a status fal adds one day cannot hang a batch.
Counting them, and de-duplication across reconnects, are the caller's job
(``JobHandle.updates``): only the caller knows what it has already shown.

Each generator holds at most one response open and starts no tasks, so breaking out of an
``async for`` (or ``aclosing``) releases everything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

import anyio

from ._converter import parse_status
from ._core import Core
from ._exceptions import APIError, AuthError, NotFoundError, TransportError
from ._logging import logger
from ._models import Completed, JobStatus, JobUrls, Queued
from ._protocol import decode_json, error_body, from_fal, is_transient
from ._retry import retry_delay, wait_before_retry, with_retries
from ._sse import EventTooLargeError, SSEDecoder
from ._transport import AnswerTooLargeError

__all__ = ["fetch_status", "raw_statuses"]

_REFUSED = (404, 405, 501)


class _StreamRefused(Exception):
    """The server does not offer the status stream for this job."""


class _StreamSilent(Exception):
    """No status event for ``Timeouts.stream_idle``, keep-alive comments or not."""


def _logs_param(logs: bool) -> dict[str, str]:
    return {"logs": "1" if logs else "0"}


async def fetch_status(core: Core, urls: JobUrls, *, logs: bool) -> JobStatus:
    """One status poll, retried on transient failures."""

    async def once() -> JobStatus:
        resp = await core.request("GET", urls.status_url, params=_logs_param(logs))
        if resp.status == 404:
            body = error_body(resp.body)
            raise NotFoundError(
                "unknown request id for this endpoint"
                if from_fal(body)
                else "404 from something between us and fal (a proxy's page), not fal's answer",
                status=404,
                body=body,
                request_id=urls.request_id,
            )
        resp.raise_for_status()
        return parse_status(resp.json("status"))

    return await with_retries(once, policy=core.config.retry, stats=core.stats)


#: A chunk of the status stream this large (bytes) is followed by a yield to the loop.
_YIELD_AFTER = 16 * 1024


async def _stream_once(core: Core, urls: JobUrls, *, logs: bool) -> AsyncGenerator[JobStatus, None]:
    async with core.stream(
        urls.stream_url,
        params=_logs_param(logs),
        headers={"Accept": "text/event-stream"},
        read_timeout=core.config.timeouts.stream_idle,
    ) as resp:
        if resp.status in _REFUSED:
            raise _StreamRefused
        if not 200 <= resp.status < 300:
            raise await core.error_of(resp)
        if resp.content_type != "text/event-stream":
            raise _StreamRefused
        decoder = SSEDecoder(max_event_bytes=core.config.limits.max_event_bytes)
        idle = core.config.timeouts.stream_idle
        # The loop's clock (asyncio only, like aiohttp): anyio.current_time() looks the
        # backend up on each call, several times per event.
        clock = time.monotonic
        last_event = clock()
        async for chunk in resp.aiter_bytes():
            for event in decoder.feed(chunk):
                last_event = clock()
                yield parse_status(decode_json(event.data, what="status event"))
            # Keep-alives prove the connection, not the job: a stream whose status source
            # stalled sends them for ever, so only an event resets the idle bound.
            if clock() - last_event > idle:
                raise _StreamSilent(f"no status event for {idle} s (Timeouts.stream_idle)")
            # A read returns whatever is buffered, up to its limit, without suspending: only
            # a large chunk can leave more behind, and a server sending faster than we parse
            # would then keep the loop from every other task. A small one emptied the
            # buffer, so the next read waits anyway (a yield per event cost a loop trip).
            if len(chunk) >= _YIELD_AFTER:
                await asyncio.sleep(0)


async def _poll(core: Core, urls: JobUrls, *, logs: bool) -> AsyncGenerator[JobStatus, None]:
    polling = core.config.polling
    previous: JobStatus | None = None
    interval = 0.0
    while True:
        try:
            status = await fetch_status(core, urls, logs=logs)
        except AnswerTooLargeError:
            if not logs:
                raise
            # The answer carries all the log lines so far, and they only grow: logs are
            # never a reason to abort a paid job, so ask without them from now on.
            logger.info("status of %s: too large with logs, polling without", urls.request_id)
            logs = False
            continue
        core.stats.status_polls += 1
        yield status
        if isinstance(status, Completed):
            return
        base = (
            polling.queued_interval if isinstance(status, Queued) else polling.in_progress_interval
        )
        changed = previous is None or type(status) is not type(previous) or status != previous
        interval = (
            base if changed else min(max(interval, base) * polling.backoff, polling.max_interval)
        )
        previous = status
        await anyio.sleep(interval)


async def raw_statuses(core: Core, urls: JobUrls, *, logs: bool) -> AsyncGenerator[JobStatus, None]:
    """Every status update received for one job, ending after the first COMPLETED: from
    the status stream, reconnected when it drops, or polled when it is refused or keeps
    failing. (Unknown statuses are counted by their one reader, ``JobHandle.updates``: a
    generator less per status.)"""
    config, stats = core.config, core.stats
    failures = 0
    use_stream = config.polling.use_stream
    last_kind: type | None = None
    while use_stream:
        try:
            stats.streams_opened += 1
            # aclosing: on COMPLETED the stream is closed here and now, in this task, rather
            # than by the garbage collector's finaliser in another one.
            async with aclosing(_stream_once(core, urls, logs=logs)) as stream:
                async for status in stream:
                    # A stream that moves the job on is healthy, however often it drops.
                    if type(status) is not last_kind:
                        failures = 0
                    last_kind = type(status)
                    yield status
                    if isinstance(status, Completed):
                        return
            stats.stream_drops += 1  # the body ended before COMPLETED
        except _StreamRefused:
            stats.stream_refused += 1
            break
        except EventTooLargeError:
            stats.stream_errors += 1  # a polled answer has its own, larger bound
            break
        except _StreamSilent as exc:
            stats.stream_errors += 1  # as a stream sending nothing at all: a read timeout
            failure: Exception | None = exc
        except AuthError:
            raise
        except (TransportError, APIError) as exc:
            if isinstance(exc, APIError) and not is_transient(exc.status):
                raise
            stats.stream_errors += 1
            failure = exc
        else:
            failure = None  # the body ended before COMPLETED
        failures += 1
        if failures >= config.polling.stream_failures:
            break
        logger.info(
            "reconnecting the status stream of %s (%s)", urls.request_id, failure or "ended"
        )
        if config.retry.wait:
            await wait_before_retry(retry_delay(failure, config.retry, failures - 1))
    if use_stream:
        stats.polling_fallbacks += 1
        logger.info(
            "status of %s: polling (the stream was refused or kept failing)", urls.request_id
        )
    async for status in _poll(core, urls, logs=logs):
        yield status
