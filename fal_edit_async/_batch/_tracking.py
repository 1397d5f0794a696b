"""Webhook-tracked jobs: wait on the ledger's webhook record instead of a status stream.

A batch given ``webhook_url`` and a journal tags each job's URL with the batch, the item and
the attempt; the receiver (``fal_edit_async.webhooks.create_app(sink=journal)``) records each
verified event in the journal, which wakes the item waiting on it at once when receiver and
batch share the journal object (one process), and is found by a ledger read every
``ReconcilePolicy.ledger_poll`` seconds otherwise. No status stream is opened: once the job
has surely ended (its start-timeout bound) without a webhook, one status GET per poll asks
fal instead, so a lost delivery never leaves an item waiting for ever.
"""

from __future__ import annotations

import time

import anyio

from .._converter import parse
from .._exceptions import ProtocolError
from .._job import JobHandle
from .._models import Completed, EditImageOutput
from .._webhook_models import WebhookEvent
from ._ledger import JournalBackend

__all__ = ["await_tagged", "await_webhook"]


async def await_webhook(
    journal: JournalBackend, handle: JobHandle, *, bound: float, poll: float, ask: bool = False
) -> EditImageOutput:
    """The job's output (or its typed failure, raised), from its webhook record.

    ``ask``: for a job an earlier run submitted and no webhook recorded, follow it as an
    untracked job is (its status stream): its webhook goes to that run's URL, whose
    receiver may be gone, and the job may have ended long ago.

    Raises what :meth:`JobHandle.fetch_result` raises for a failed or cancelled job.
    """
    request_id = handle.request_id
    if ask and await journal.webhook(request_id) is None:
        return await _followed(handle)
    while True:
        waiter = journal.webhook_waiter(request_id)  # before the read: nothing slips between
        event = await journal.webhook(request_id)
        if event is not None:
            return await _output(handle, event)
        now = time.time()
        if now >= bound:
            status = await handle.status()  # one GET: the webhook may never come
            if isinstance(status, Completed):
                return await handle.fetch_result(status)
        wait = poll if now >= bound else min(poll, bound - now)
        with anyio.move_on_after(wait):
            await waiter.wait()


async def await_tagged(
    journal: JournalBackend, item: str, attempt: int, *, until: float, poll: float
) -> list[WebhookEvent]:
    """The webhook records tagged with this item and attempt, waiting for one until
    ``until`` (unix seconds): how a submit whose answer was lost finds its job."""
    while True:
        waiter = journal.tag_waiter(item, attempt)
        found = await journal.tagged_webhooks(item, attempt)
        now = time.time()
        if found or now >= until:
            return found
        with anyio.move_on_after(min(poll, until - now)):
            await waiter.wait()


async def _output(handle: JobHandle, event: WebhookEvent) -> EditImageOutput:
    if event.ok:
        try:
            return parse(event.payload, EditImageOutput)
        except ProtocolError:
            pass  # the signed payload is not an output: ask the queue, as without webhooks
    # A failure (or an output that did not parse): the job's status and result, so the
    # error is typed exactly as a followed job's would be.
    return await _followed(handle)


async def _followed(handle: JobHandle) -> EditImageOutput:
    """The job's output, asked of fal as an untracked job's is: one status GET, then its
    status stream while it runs (fal's status may lag its webhook), and the result read
    knowing the status (on its own, a proxy's bare 499 there would read as a cancel)."""
    status = await handle.status()
    if not isinstance(status, Completed):
        status = await handle.wait(cancel_on_exit=False, logs=False)
    return await handle.fetch_result(status)
