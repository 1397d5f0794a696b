"""Type-checked only, never run: ``mypy --strict tests/typing/api.py`` pins the public signatures.

Each line uses the public API the way a user would; ``assert_type`` fails the type check when a
signature or an attribute's type drifts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, assert_never, assert_type

import fal_edit_async as fal

# --- the edit input --------------------------------------------------------------------------

inp = fal.EditImageInput(
    prompt="Make this pixel-art style.",
    image_urls=["https://example.com/cat.png", Path("photo.png"), b"\x89PNG"],
    image_size=fal.ImageSize.SQUARE,
    background="transparent",
    quality=fal.Quality.LOW,
    input_fidelity=fal.InputFidelity.HIGH,
    num_images=2,
    output_format=fal.OutputFormat.WEBP,
    sync_mode=False,
)
assert_type(inp.prompt, str)
assert_type(inp.image_urls, tuple[fal.ImageSource, ...])
assert_type(inp.image_size, fal.ImageSize)
assert_type(inp.background, fal.Background)
assert_type(inp.quality, fal.Quality)
assert_type(inp.input_fidelity, fal.InputFidelity)
assert_type(inp.num_images, int)
assert_type(inp.output_format, fal.OutputFormat)
assert_type(inp.sync_mode, bool)
assert_type(inp.is_resolved, bool)
assert_type(
    fal.input_from_dict({"prompt": "p", "image_urls": ["https://x/y.png"]}), fal.EditImageInput
)
assert_type(fal.is_remote_url("https://x/y.png"), bool)

source: fal.ImageSource = Path("photo.png")
source = b"raw bytes"
source = "data:image/png;base64,AAAA"

# --- outputs and statuses ----------------------------------------------------------------------

out = fal.EditImageOutput(images=(fal.ImageFile(url="https://v3.fal.media/files/a.png"),))
assert_type(out.images, tuple[fal.ImageFile, ...])
assert_type(out.images[0].url, str)
assert_type(out.images[0].width, int | None)

receipt = fal.SubmitReceipt(request_id="r", response_url="u", status_url="s", cancel_url="c")
assert_type(receipt.request_id, str)
assert_type(receipt.queue_position, int | None)


def describe(status: fal.JobStatus) -> str:
    """JobStatus is exactly these four classes: a fifth would fail assert_never."""
    if isinstance(status, fal.Queued):
        assert_type(status.position, int | None)
        return f"queued at {status.position}"
    if isinstance(status, fal.InProgress):
        assert_type(status.logs, tuple[fal.LogEntry, ...])
        return "running"
    if isinstance(status, fal.Completed):
        assert_type(status.failed, bool)
        assert_type(status.error, str | None)
        return "done"
    if isinstance(status, fal.UnknownStatus):
        assert_type(status.status, str)
        return status.status
    assert_never(status)


assert_type(fal.CancelOutcome("OK"), fal.CancelOutcome)

# --- endpoint ids -------------------------------------------------------------------------------

endpoint = fal.EndpointId.parse("fal-ai/gpt-image-1/edit-image")
assert_type(endpoint, fal.EndpointId)
assert_type(endpoint.app_root, str)
assert_type(endpoint.submit_path, str)
assert_type(endpoint.path, str | None)

# --- configuration ------------------------------------------------------------------------------

config = fal.ClientConfig.from_env(
    {"FAL_KEY": "k"},
    api_key="k",
    limits=fal.Limits(jobs=64),
    timeouts=fal.Timeouts(connect=5.0, read=30.0),
    retry=fal.RetryPolicy(max_attempts=3, wait=False),
    polling=fal.Polling(queued_interval=0.5),
)
assert_type(config, fal.ClientConfig)
assert_type(config.credentials, fal.Credentials | None)
assert_type(config.queue_url, str)
assert_type(config.timeouts, fal.Timeouts)
assert_type(fal.Credentials.from_env({}), fal.Credentials | None)
assert_type(fal.Credentials("k").header_value, str)
assert_type(fal.DEFAULT_LIMITS, fal.Limits)
assert_type(fal.NameTemplate.parse(fal.DEFAULT_NAME_TEMPLATE).text, str)
assert_type(fal.DEFAULT_TIMEOUTS.read, float)
assert_type(fal.DEFAULT_QUEUE_URL, str)

# --- errors -------------------------------------------------------------------------------------

input_error = fal.InputError("num_images", 5, "an integer from 1 to 4")
assert_type(input_error.field, str)
assert_type(input_error.value, object)
assert_type(input_error.allowed, str)
base: fal.FalEditError = input_error
value_error: ValueError = input_error
timeout: TimeoutError = fal.JobTimeoutError("r", 1.0)
api_error: fal.APIError = fal.RateLimitError("slow", status=429, retry_after=1.0)
auth_error: fal.AuthError = fal.BillingError("locked", status=403)
assert_type(fal.RateLimitError("slow", status=429).retry_after, float | None)
assert_type(fal.APIError("x", status=500).status, int)
assert_type(fal.APIError("x", status=500).request_id, str | None)
assert_type(fal.ProtocolError("x").details, list[str])
assert_type(fal.JobFailedError(request_id="r", error=None).request_id, str)

missing_key: fal.InputError = fal.MissingCredentialsError()
loop_error: RuntimeError = fal.EventLoopError("asyncio only")

assert_type(fal.__version__, str)


# --- the client, jobs and batches ------------------------------------------------------------


async def client_api() -> None:
    """The async surface apps and batch jobs use."""
    async with fal.AsyncClient(api_key="k", limits=fal.Limits(jobs=8)) as client:
        assert_type(await client.edit(inp, timeout=30.0, on_update=print), fal.EditImageOutput)
        handle = await client.submit(inp, priority="low", start_timeout=30.0)
        assert_type(handle, fal.JobHandle)
        assert_type(handle.request_id, str)
        async for update in handle.updates():
            assert_type(update, fal.JobStatus)
        async for entry in handle.logs():
            assert_type(entry, fal.LogEntry)
        assert_type(await handle.wait(timeout=10.0), fal.Completed)
        assert_type(await handle.result(), fal.EditImageOutput)
        assert_type(await handle.cancel(), fal.CancelOutcome)
        assert_type(client.handle("request-id"), fal.JobHandle)
        assert_type(await client.status("request-id", logs=True), fal.JobStatus)
        assert_type(await client.cancel("request-id"), fal.CancelOutcome)
        files = await client.download(out, Path("out"), stem="cat")
        assert_type(files, list[fal.DownloadedFile])
        items: list[fal.BatchItem] = [inp, ("key", inp), {"prompt": "p", "image_urls": []}]
        async with client.edit_many(
            items,
            concurrency=4,
            download_to="out",
            journal="run.journal",
            budget=5.0,
            name_template="{key}_{n:02}.{ext}",
        ) as batch:
            assert_type(batch, fal.Batch)
            async for result in batch:
                assert_type(result, fal.ItemResult)
                assert_type(result.state, fal.ItemState)
                assert_type(result.error, fal.FalEditError | None)
        assert_type(batch.summary(), fal.BatchSummary)
        assert_type(batch.summary().journal_error, fal.JournalError | None)
    assert_type(fal.estimate_batch(items), fal.BatchEstimate)
    assert_type(fal.estimate_cost(inp), fal.CostEstimate)


def sync_client_api() -> None:
    """The synchronous surface scripts and notebooks use: the same verbs, blocking."""
    with fal.Client(api_key="k", config=None) as client:
        assert_type(client.edit(inp, timeout=30.0, on_update=print), fal.EditImageOutput)
        assert_type(
            client.edit({"prompt": "p", "image_urls": ["https://x/y.png"]}), fal.EditImageOutput
        )
        handle = client.submit(inp, priority="low")
        assert_type(handle, fal.SyncJobHandle)
        assert_type(handle.request_id, str)
        for update in handle.updates():
            assert_type(update, fal.JobStatus)
        for entry in handle.logs():
            assert_type(entry, fal.LogEntry)
        assert_type(handle.wait(timeout=10.0), fal.Completed)
        assert_type(handle.result(), fal.EditImageOutput)
        assert_type(handle.cancel(), fal.CancelOutcome)
        assert_type(client.handle("request-id"), fal.SyncJobHandle)
        assert_type(client.status("request-id"), fal.JobStatus)
        assert_type(client.result("request-id"), fal.EditImageOutput)
        assert_type(client.download(out, "out"), list[fal.DownloadedFile])
        with fal.ProgressBar(total=2, kind="text") as bar:
            batch = client.edit_many([inp, inp], download_to="out", on_event=bar)
            assert_type(batch, fal.SyncBatch)
            for result in batch:
                assert_type(result, fal.ItemResult)
            assert_type(batch.summary(), fal.BatchSummary)
        client.edit_many([inp], concurency=4)  # type: ignore[call-arg]
    assert_type(out.to_dict(), dict[str, Any])
    assert_type(fal.EditImageOutput.from_dict(out.to_dict()), fal.EditImageOutput)
    assert_type(fal.Queued.from_dict({"status": "IN_QUEUE", "queue_position": 0}), fal.Queued)
    assert_type(fal.EditImageInput.from_dict(inp.to_dict()), fal.EditImageInput)


# --- options are typed: a misspelt or mistyped one is a type error -------------------------------
# Each ``type: ignore[code]`` below is *required*: mypy --strict warns about an unused ignore, so
# if a signature stopped rejecting the call, this file would fail the type check.


async def options_are_checked() -> None:
    """SubmitOptions under Unpack: submit, edit and edit_many reject what they do not know."""
    async with fal.AsyncClient(api_key="k") as client:
        await client.submit(inp, priorty="low")  # type: ignore[call-arg]
        await client.edit(inp, priority="urgent")  # type: ignore[arg-type]
        await client.edit(inp, start_timeout="30")  # type: ignore[arg-type]
        client.edit_many([inp], priorty="low")  # type: ignore[call-arg]
        client.edit_many([inp], concurency=4)  # type: ignore[call-arg]
        options: fal.SubmitOptions = {"priority": "low", "endpoint": "fal-ai/gpt-image-1/edit"}
        await client.submit(inp, **options)
        stats = client.statistics()
        assert_type(stats, fal.ClientStatistics)
        assert_type(stats.retries.rate_limit, int)
        stats.retries.ratelimit  # type: ignore[attr-defined]  # noqa: B018


def transports() -> None:
    """Both shipped transports satisfy the Transport protocol the client takes."""

    def handler(request: fal.Request) -> fal.Response:
        return fal.Response(status=200, json={"request_id": "r"})

    fal.AsyncClient(api_key="k", transport=fal.MockTransport(handler))
    fal.AsyncClient(api_key="k", transport=fal.AiohttpTransport())


# --- webhooks ---------------------------------------------------------------------------------

from fal_edit_async import webhooks  # noqa: E402

_keys = webhooks.WebhookKeys.from_jwks({"keys": []})
_event = webhooks.verify({}, b"{}", jwks=_keys, now=0.0, tolerance=300)
assert_type(_event, fal.WebhookEvent)
assert_type(_event.request_id, str)
assert_type(_event.ok, bool)
assert_type(_event.tag, fal.WebhookTag | None)
assert_type(webhooks.JwksCache(webhooks.DEFAULT_JWKS_URL, ttl=3600.0), webhooks.JwksCache)
_error: fal.WebhookError = fal.WebhookTimestampError("stale", timestamp=0.0, now=400.0)
assert_type(_error.http_status, int)
