"""A hostile server: the client stays correct, or fails that item with a clear error.

The emulator's hostile modes (``schedule_fault`` kinds such as ``sse_hostile``,
``zero_images``, ``hostile_names``, ``redirect``) bend every answer a client relies on. A
second loopback origin, :class:`Recorder`, stands for "somewhere else": it records every
request, and the tests check that it never sees the key. Every download test also checks that
nothing is written outside the output folder.

Decisions these tests pin down:

* unknown fields are ignored, an unknown status value is passed on as ``UnknownStatus``;
* a body or event that is not JSON fails that item with ``ProtocolError`` (the job keeps its
  request id, so it can be re-attached);
* a result with no images is a ``ProtocolError``: a paid job that produced nothing must not
  pass as done. So is a result with more images than ``num_images`` (a hostile server must
  not make a batch download any number of files);
* API calls never follow a redirect (``APIError`` saying so); downloads follow one, without
  the key, which never travels with a download anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from aiohttp import web

from fal_edit_async import (
    APIError,
    AsyncClient,
    AuthError,
    CancelOutcome,
    Completed,
    DownloadError,
    EditImageInput,
    ItemResult,
    ItemState,
    JobCancelledError,
    JobFailedError,
    JobStatus,
    NotFoundError,
    ProtocolError,
    Timeouts,
    TransportError,
    UnknownStatus,
)
from fal_edit_async._sse import SSEDecoder
from fal_edit_async.emulator import Emulator

from .conftest import FAST_POLLING, client_for

#: A log line with characters of 2, 3 and 4 bytes in UTF-8, to be split mid-character.
UNICODE_LOG = "café ☕ über 🎨"
POLL_ONLY = attrs.evolve(FAST_POLLING, use_stream=False)


@attrs.define
class Recorder:
    """Another origin: records every request, serves a PNG for ``*.png``, JSON otherwise."""

    png: bytes
    requests: list[tuple[str, str, dict[str, str]]] = attrs.field(factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Record the request; answer it."""
        await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        if request.path.endswith(".png"):
            return web.Response(body=self.png, content_type="image/png")
        return web.json_response({"status": "COMPLETED", "images": []})

    def saw(self, secret: str) -> bool:
        """True when ``secret`` appeared in any request line or header."""
        return any(
            secret in path or any(secret in f"{k}: {v}" for k, v in headers.items())
            for _, path, headers in self.requests
        )


@asynccontextmanager
async def recording_origin(png: bytes) -> AsyncIterator[Recorder]:
    """A running Recorder on an ephemeral loopback port."""
    rec = Recorder(png)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def recorder(png_bytes: bytes) -> AsyncIterator[Recorder]:
    """Another origin, recording what reaches it."""
    async with recording_origin(png_bytes) as rec:
        yield rec


@pytest.fixture
def edit_input(png_data_uri: str) -> EditImageInput:
    """A valid edit of the test image, asking for two outputs."""
    return EditImageInput(prompt="make it pixel art", image_urls=[png_data_uri], num_images=2)


def only_folder(root: Path, folder: str) -> None:
    """``root`` holds nothing but ``folder`` (and what is inside it)."""
    assert [folder] == sorted(p.name for p in root.iterdir())
    assert [] == [p for p in (root / folder).rglob("*") if p.parent != root / folder]


async def batch_of(client: AsyncClient, items: Any, **options: Any) -> list[ItemResult]:
    """Run a batch to its end."""
    async with client.edit_many(items, **options) as batch:
        return [r async for r in batch]


# -- status bodies and events -------------------------------------------------------------


@pytest.mark.parametrize("route", ["status", "stream"])
@pytest.mark.parametrize("kind", ["unknown_fields", "unknown_status"])
async def test_unknown_fields_and_statuses_are_tolerated(
    emulator: Emulator, edit_input: EditImageInput, route: str, kind: str
) -> None:
    """Unknown fields are ignored; an unknown status is passed on, then the job completes."""
    polling = POLL_ONLY if route == "status" else FAST_POLLING
    emulator.schedule_fault(route, kind, times=3)
    seen: list[JobStatus] = []
    async with client_for(emulator, polling=polling) as client:
        output = await client.edit(edit_input, on_update=seen.append)

    assert 2 == len(output.images)
    assert emulator.counters.faults_injected[kind] > 0
    assert isinstance(seen[-1], Completed)
    if kind == "unknown_status":
        unknown = [s for s in seen if isinstance(s, UnknownStatus)]
        assert ["PAUSED_FOR_MAINTENANCE"] == [s.status for s in unknown][:1]


@pytest.mark.parametrize("kind", ["sse_split", "sse_crlf", "sse_noise", "sse_hostile"])
async def test_hostile_sse_framing_is_read_correctly(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, kind: str
) -> None:
    """Split bytes, CRLF, comments, event/id/retry fields: every log line arrives once, intact."""
    emulator.hold_jobs()
    handle = await client.submit(edit_input)
    await emulator.wait_jobs_held(1)
    emulator.schedule_fault("stream", kind)
    done: list[Completed] = []

    async def wait() -> None:
        done.append(await handle.wait())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await emulator.wait_status_stream_open(handle.request_id)
        emulator.add_log(handle.request_id, UNICODE_LOG)
        emulator.release_jobs()

    messages = [entry.message for entry in done[0].logs]
    assert ["[1/3] Preparing inputs", "[2/3] Editing image", "[3/3] Encoding outputs"] == (
        messages[:3]
    )
    assert [UNICODE_LOG] == messages[3:]
    assert 1 == emulator.counters.streams_opened  # read to the end: no reconnect, no polling
    assert 1 == emulator.counters.faults_injected[kind]


def test_decoder_byte_by_byte_with_every_sse_feature() -> None:
    """Fed one byte at a time, the decoder keeps CRLF, comments, fields and UTF-8 intact."""
    stream = (
        ": keep-alive\r\n\r\n"
        "event: status\r\nid: 7\r\nretry: 3000\r\nx-unknown: 1\r\n"
        'data: {"message":\r\ndata:  "' + UNICODE_LOG + '"}\r\n\r\n'
    ).encode()
    decoder = SSEDecoder()
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]

    assert 1 == len(events)
    assert ("status", "7", 3000) == (events[0].event, events[0].id, events[0].retry)
    assert '{"message":\n "' + UNICODE_LOG + '"}' == events[0].data


@pytest.mark.parametrize("route", ["status", "stream", "result"])
async def test_invalid_json_fails_that_item_clearly(
    emulator: Emulator, edit_input: EditImageInput, png_data_uri: str, route: str
) -> None:
    """A body or event that is not JSON is a ProtocolError for that item; the job is kept."""
    polling = POLL_ONLY if route == "status" else FAST_POLLING
    async with client_for(emulator, polling=polling) as client:
        emulator.schedule_fault(route, "invalid_json")
        with pytest.raises(ProtocolError, match="not JSON"):
            await client.edit(edit_input)

        emulator.schedule_fault(route, "invalid_json")
        items = [("bad", edit_input), ("good", attrs.evolve(edit_input, prompt="other"))]
        results = {r.key: r for r in await batch_of(client, items, concurrency=1)}
        bad = results["bad"]
        assert results["good"].ok
        assert isinstance(bad.error, ProtocolError)
        assert bad.request_id is not None and bad.request_id in emulator.jobs
        # Nothing lost: the paid job can be re-attached by its request id.
        assert 2 == len((await client.result(bad.request_id)).images)


# -- results --------------------------------------------------------------------------------


async def test_result_with_zero_images_is_a_protocol_error(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """A successful result with no images is a ProtocolError naming the request, not a success."""
    emulator.schedule_fault("result", "zero_images", times=2)
    with pytest.raises(ProtocolError, match="no images") as caught:
        await client.edit(edit_input)
    assert next(iter(emulator.jobs)) in str(caught.value)

    (result,) = await batch_of(client, [("empty", edit_input)], download_to=tmp_path / "out")
    assert ItemState.FAILED == result.state
    assert isinstance(result.error, ProtocolError)
    assert 1 == result.attempts  # not a job failure: no second job
    assert 2 == emulator.counters.submits


async def test_edit_with_more_images_than_asked_is_a_protocol_error(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput
) -> None:
    """A result with more images than num_images is a ProtocolError naming both numbers."""
    emulator.schedule_fault("result", "extra_images")
    with pytest.raises(ProtocolError, match="6 images but num_images=2"):
        await client.edit(edit_input)


async def test_batch_with_more_images_than_asked_fails_that_item(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """A result with more images than num_images fails its item, and nothing is downloaded."""
    emulator.schedule_fault("result", "extra_images")
    (result,) = await batch_of(client, [("extra", edit_input)], download_to=tmp_path)
    assert isinstance(result.error, ProtocolError)
    assert [] == list(tmp_path.iterdir())


async def test_a_journaled_item_given_too_many_images_is_fetched_again_by_a_rerun(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """The bad answer is never journaled as the job's output (atk14 D: it was, and every
    rerun replayed it and failed again, with no result fetch, for good): the row keeps the
    job, and a rerun re-attaches and asks fal for the result again, paying nothing."""
    emulator.schedule_fault("result", "extra_images")
    journal, out = tmp_path / "j", tmp_path / "out"
    (first,) = await batch_of(client, [("extra", edit_input)], journal=journal, download_to=out)
    fetches = emulator.counters.result_fetches

    (again,) = await batch_of(client, [("extra", edit_input)], journal=journal, download_to=out)

    assert isinstance(first.error, ProtocolError)
    assert again.ok and again.resumed and 1 == emulator.counters.submits
    assert emulator.counters.result_fetches == fetches + 1
    assert [f.path for f in again.files] == sorted(out.glob("*.png"))


async def test_hostile_file_names_never_reach_the_disk(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """file_name values with ../, absolute paths or NUL never decide where a file is written."""
    outside = [tmp_path.parent / "escape.png", Path("/tmp/absolute.png")]
    before = {p: p.exists() for p in outside}
    emulator.schedule_fault("result", "hostile_names", times=2)

    (result,) = await batch_of(client, [("photo", edit_input)], download_to=tmp_path / "out")
    output = await client.edit(edit_input)
    files = await client.download(output, tmp_path / "out", stem="single")

    assert result.ok
    assert "../../escape.png" == result.output.images[0].file_name  # type: ignore[union-attr]
    names = sorted(f.path.name for f in [*result.files, *files])
    assert ["photo_0.png", "photo_1.png", "single_0.png", "single_1.png"] == names
    only_folder(tmp_path, "out")
    assert before == {p: p.exists() for p in outside}


# -- downloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong_content_type", "Content-Type 'text/html' is not an image"),
        ("oversized", "body exceeds the file_size"),
    ],
)
async def test_hostile_download_fails_only_its_item(
    emulator: Emulator,
    client: AsyncClient,
    png_data_uri: str,
    tmp_path: Path,
    kind: str,
    reason: str,
) -> None:
    """A download of the wrong type, or longer than announced, fails its item, leaving no file."""
    emulator.schedule_fault("download", kind)
    items = [("bad", EditImageInput(prompt="a", image_urls=[png_data_uri]))]
    items.append(("good", EditImageInput(prompt="b", image_urls=[png_data_uri])))

    results = {r.key: r for r in await batch_of(client, items, concurrency=1, download_to=tmp_path)}

    assert results["good"].ok
    assert isinstance(results["bad"].error, DownloadError)
    assert reason in str(results["bad"].error)
    assert results["bad"].request_id in emulator.jobs
    assert ["good_0.png"] == [p.name for p in tmp_path.iterdir()]


async def test_download_beyond_the_cap(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """client.download(max_bytes=) refuses a file announced or streamed beyond the cap."""
    output = await client.edit(edit_input)
    image = output.images[0]
    assert image.file_size is not None
    cap = image.file_size - 1
    unannounced = attrs.evolve(image, file_size=None)
    emulator.schedule_fault("download", "oversized")  # chunked: no Content-Length either

    with pytest.raises(ExceptionGroup) as announced:
        await client.download([image], tmp_path, max_bytes=cap)
    with pytest.raises(ExceptionGroup) as streamed:
        await client.download([unannounced], tmp_path, max_bytes=cap)

    assert "over max_bytes" in str(announced.value.exceptions[0])
    assert f"body exceeds max_bytes={cap}" in str(streamed.value.exceptions[0])
    assert [] == list(tmp_path.iterdir())


# -- redirects and foreign URLs: the key stays on the configured hosts ----------------------


@pytest.mark.parametrize("route", ["submit", "status", "stream", "result", "cancel"])
async def test_api_redirect_is_not_followed(
    emulator: Emulator, recorder: Recorder, edit_input: EditImageInput, route: str
) -> None:
    """A 302 from the queue origin is an APIError saying so; the other origin sees nothing."""
    polling = POLL_ONLY if route == "status" else FAST_POLLING
    async with client_for(emulator, polling=polling) as client:
        handle = await client.submit(edit_input) if route == "cancel" else None
        emulator.schedule_fault(route, "redirect", location=f"{recorder.url}/steal?x=1")
        with pytest.raises(APIError, match="not followed") as caught:
            if handle is not None:
                await handle.cancel()
            else:
                await client.edit(edit_input)

    assert 302 == caught.value.status
    assert [] == recorder.requests


async def test_foreign_job_urls_in_a_submit_answer_are_not_used(
    emulator: Emulator, client: AsyncClient, recorder: Recorder, edit_input: EditImageInput
) -> None:
    """A submit answer whose URLs point elsewhere is ignored: URLs are built on the queue origin."""
    emulator.schedule_fault("submit", "foreign_urls", location=recorder.url)
    handle = await client.submit(edit_input)
    output = await handle.result()

    assert 2 == len(output.images)
    assert handle.urls.status_url.startswith(emulator.queue_url)
    assert [] == recorder.requests


async def test_a_submit_answer_with_another_apps_urls_is_not_followed(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput
) -> None:
    """atk26 F1: URLs on the queue's host naming this job's id under another app's path were
    kept; fal answers a JSON 404 there, so edit() failed ("unknown request id") and a
    journaled rerun took the job for expired (and --retry-failed paid again). The URLs are
    built for this endpoint's app instead."""
    emulator.schedule_fault("submit", "foreign_urls", location=f"{emulator.queue_url}/o/app")
    output = await client.edit(edit_input)

    assert edit_input.num_images == len(output.images)
    assert 1 == emulator.counters.submits and 1 == emulator.counters.result_fetches


async def test_a_submit_answer_naming_another_jobs_urls_is_not_followed(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """atk24 F2: a submit answered with the URLs of the job submitted before (on the queue
    origin) had the second item follow the first one's job and take its output, while its
    own job ran unfetched. URLs must name the answer's request id, or they are built."""
    items = [("a", EditImageInput(prompt="a", image_urls=[png_data_uri]))]
    items.append(("b", EditImageInput(prompt="b", image_urls=[png_data_uri])))
    first = await batch_of(client, items[:1])
    emulator.schedule_fault("submit", "other_job_urls")
    (second,) = await batch_of(client, items[1:])

    assert first[0].ok and second.ok and second.request_id is not None
    assert emulator.jobs[second.request_id].result_fetched_at is not None
    assert 2 == emulator.counters.result_fetches  # each job's once


async def test_download_redirect_is_followed_without_the_key(
    emulator: Emulator, client: AsyncClient, recorder: Recorder, png_data_uri: str, tmp_path: Path
) -> None:
    """A download redirected to another origin is fetched there, and that origin gets no key."""
    emulator.schedule_fault("download", "redirect", location=f"{recorder.url}/moved.png")
    item = EditImageInput(prompt="x", image_urls=[png_data_uri])

    (result,) = await batch_of(client, [("moved", item)], download_to=tmp_path / "out")

    # The recorder's PNG is not the file fal announced: refused, then fetched again from fal.
    assert result.ok
    assert 1 == client.statistics().retries.download
    assert [("GET", "/moved.png")] == [r[:2] for r in recorder.requests]
    assert not recorder.saw(emulator.api_key)
    assert "Authorization" not in recorder.requests[0][2]
    assert 0 == emulator.counters.cdn_auth_requests
    only_folder(tmp_path, "out")


async def test_download_redirect_to_the_same_file_completes(
    emulator: Emulator,
    client: AsyncClient,
    recorder: Recorder,
    edit_input: EditImageInput,
    tmp_path: Path,
) -> None:
    """Redirected to the very same bytes on another origin, the download completes, keyless."""
    output = await client.edit(edit_input)
    (direct,) = await client.download(output.images[:1], tmp_path / "direct")
    recorder.png = direct.path.read_bytes()
    emulator.schedule_fault("download", "redirect", location=f"{recorder.url}/same.png")

    (moved,) = await client.download(output.images[:1], tmp_path / "moved")

    assert direct.sha256 == moved.sha256
    assert 1 == len(recorder.requests)
    assert not recorder.saw(emulator.api_key)
    assert 0 == emulator.counters.cdn_auth_requests


async def test_gateway_error_page_on_cancel_is_retried(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput
) -> None:
    """A 502 HTML page on cancel is retried like any gateway error; the job does get cancelled."""
    emulator.hold_jobs()
    handle = await client.submit(edit_input)
    emulator.schedule_fault("cancel", "ingress_error", times=2)

    assert CancelOutcome.REQUESTED == await handle.cancel()
    assert 2 == client.statistics().retries.server_error
    job = await emulator.wait_for_state(handle.request_id, "COMPLETED")
    assert "client_cancelled" == job.error_type


@pytest.mark.parametrize("error_type", [None, "client_disconnected"])
async def test_a_proxys_499_is_no_cancel_of_a_job_that_succeeded(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, error_type: str | None
) -> None:
    """atk22 F1: a result GET answered 499 with nothing in it, or ``client_disconnected``
    (a proxy's "client closed request"), for a job whose status said it succeeded, is a
    failed GET, retried; it used to end the edit cancelled, its paid output never fetched."""
    given = {} if error_type is None else {"error_type": error_type}
    emulator.schedule_fault("result", "request_error", times=2, **given)

    output = await client.edit(edit_input)

    assert edit_input.num_images == len(output.images)
    assert 2 == client.statistics().retries.server_error
    assert 1 == emulator.counters.submits


@pytest.mark.parametrize("route", ["stream", "status"])
async def test_a_proxys_499_on_the_status_route_is_retried(
    emulator: Emulator, edit_input: EditImageInput, route: str
) -> None:
    """atk23 F2: a bare 499 on the status stream or a status poll is about that request: the
    stream is opened again, the poll sent again; it used to fail the paid job."""
    emulator.schedule_fault(route, "request_error")
    polling = POLL_ONLY if route == "status" else FAST_POLLING
    async with client_for(emulator, polling=polling) as client:
        output = await client.edit(edit_input)

    assert edit_input.num_images == len(output.images)
    assert 1 == emulator.counters.submits and 1 == emulator.counters.billed


async def test_a_proxys_404_on_a_status_poll_is_not_called_fals(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput
) -> None:
    """A 404 page that is no JSON, on a status GET, is not fal saying it does not know the
    job: the error says where it came from; fal's own JSON 404 still reads as fal's."""
    handle = await client.submit(edit_input)
    emulator.schedule_fault("status", "request_error", status=404)
    with pytest.raises(NotFoundError) as proxy:
        await handle.status()
    unknown = client.handle("00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFoundError) as fal:
        await unknown.status()

    assert "unknown request id" not in str(proxy.value) and "proxy" in str(proxy.value)
    assert "unknown request id for this endpoint" in str(fal.value)


async def test_a_batch_item_given_only_499s_fails_and_is_not_cancelled(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """Every result GET answered a bare 499: the item fails with that answer and its row
    keeps the job, so the rerun fetches the paid output and nothing is submitted again."""
    emulator.schedule_fault("result", "request_error", times=100)
    (first,) = await batch_of(client, [("a", edit_input)], journal=tmp_path / "j")
    emulator.clear_faults()
    (again,) = await batch_of(client, [("a", edit_input)], journal=tmp_path / "j")

    assert ItemState.FAILED is first.state
    assert isinstance(first.error, APIError) and 499 == first.error.status
    assert again.ok and again.resumed and first.request_id == again.request_id
    assert 1 == emulator.counters.submits


async def test_a_proxys_499_on_a_failed_jobs_result_is_not_its_failure(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput, tmp_path: Path
) -> None:
    """atk24 F8: a job fal failed (a model refusal, 422) whose result GETs a proxy answered
    with 499 ``client_disconnected`` was journaled failed with the proxy's error type, and
    every rerun replayed it. The 499 is the GET's failure: the row keeps the job, and the
    rerun reads fal's own verdict."""
    emulator.schedule_fault("job", "model_failure", error_type="validation")
    emulator.schedule_fault("result", "request_error", error_type="client_disconnected", times=100)
    (first,) = await batch_of(client, [("a", edit_input)], journal=tmp_path / "j")
    emulator.clear_faults()
    (again,) = await batch_of(client, [("a", edit_input)], journal=tmp_path / "j")

    assert ItemState.FAILED is first.state
    assert isinstance(first.error, APIError) and 499 == first.error.status
    assert not isinstance(first.error, JobFailedError)
    assert isinstance(again.error, JobFailedError) and again.resumed
    assert (422, None) == (again.error.status, again.error.error_type)
    assert 1 == emulator.counters.submits


async def test_a_499_that_says_client_cancelled_is_a_cancel(
    emulator: Emulator, client: AsyncClient, edit_input: EditImageInput
) -> None:
    """fal's own ``client_cancelled`` on the result is its word, even after a status that
    named no error (how fal reports a cancelled run is unconfirmed); so is a bare 499 when
    nothing else is known of the job."""
    emulator.schedule_fault("result", "request_error", error_type="client_cancelled")
    with pytest.raises(JobCancelledError):
        await client.edit(edit_input)

    handle = await client.submit(edit_input)
    await emulator.wait_for_state(handle.request_id, "COMPLETED")
    emulator.schedule_fault("result", "request_error")
    with pytest.raises(JobCancelledError):
        await client.handle(handle.request_id).fetch_result()


async def test_a_hung_submit_answer_is_bounded_by_the_callers_deadline(
    emulator: Emulator, edit_input: EditImageInput
) -> None:
    """atk23 F3: the POST is sent and its answer never comes. ``edit(timeout=)`` waits for it
    Timeouts.cancel past its deadline, not Timeouts.submit (120 s by default), and says the
    job may be queued. (Waiting out Timeouts.submit instead ends in another TransportError,
    a read timeout: the message tells them apart, not a clock.)"""
    emulator.schedule_fault("submit", "slow_response", delay=3600)
    timeouts = Timeouts(submit=20, cancel=0.2)
    async with client_for(emulator, timeouts=timeouts) as client:
        with pytest.raises(TransportError, match="no answer to the submit by the deadline"):
            await client.edit(edit_input, timeout=0.2)
    emulator.release_slow()


async def test_echoed_key_is_scrubbed_from_errors(
    emulator: Emulator, edit_input: EditImageInput
) -> None:
    """A server that quotes the key back in an error body never gets it into the exception."""
    async with client_for(emulator, polling=POLL_ONLY) as client:
        for route in ("submit", "status", "result"):
            emulator.schedule_fault(route, "echo_key")
            with pytest.raises(AuthError) as caught:
                await client.edit(edit_input)
            assert emulator.api_key not in str(caught.value), route
            assert "<redacted>" in str(caught.value), route
    async with client_for(emulator) as client:
        emulator.schedule_fault("stream", "echo_key")
        with pytest.raises(AuthError) as caught:
            await client.edit(edit_input)
        assert emulator.api_key not in str(caught.value)


@pytest.mark.parametrize("route", ["status", "stream", "result"])
async def test_protocol_errors_name_the_request(
    emulator: Emulator, edit_input: EditImageInput, route: str
) -> None:
    """A ProtocolError about a job carries its request id, in the message and as an attribute."""
    polling = POLL_ONLY if route == "status" else FAST_POLLING
    async with client_for(emulator, polling=polling) as client:
        emulator.schedule_fault(route, "invalid_json")
        with pytest.raises(ProtocolError) as caught:
            await client.edit(edit_input)

    (request_id,) = emulator.jobs
    assert request_id == caught.value.request_id
    assert request_id in str(caught.value)
