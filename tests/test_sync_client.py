"""The synchronous Client: the async client's behaviour behind blocking calls.

The emulator runs on an event loop in a thread of its own (a blocking portal), as a remote
fal would, and the tests call the Client from plain synchronous code, from threads and from
inside a running asyncio loop (a notebook cell). An interrupt is a real SIGINT delivered to
the main thread once the emulator holds the job, exactly as Ctrl-C would arrive.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from fal_edit_async import (
    Client,
    EditImageInput,
    EditImageOutput,
    InputError,
    ItemState,
    JobTimeoutError,
    MissingCredentialsError,
    SyncJobHandle,
    Timeouts,
)
from fal_edit_async.emulator import Emulator

from .conftest import FAST_POLLING, FAST_RETRY, make_png

PNG = make_png()


class Emu:
    """An emulator on its own thread's loop, and a way to call it from the test's thread."""

    def __init__(self, portal: BlockingPortal, emu: Emulator) -> None:
        self.portal = portal
        self.emu = emu

    def client(self, **overrides: Any) -> Client:
        options: dict[str, Any] = {
            "api_key": self.emu.api_key,
            "queue_url": self.emu.queue_url,
            "rest_url": self.emu.rest_url,
            "retry": FAST_RETRY,
            "polling": FAST_POLLING,
            "timeouts": Timeouts(cancel=5.0),
        }
        options.update(overrides)
        return Client(**options)

    def hold_jobs(self) -> None:
        """Hold every job at the start of its run (on the emulator's own loop: its events are
        not thread-safe, and a wake-up set from here could wait for the loop's next one)."""
        self.portal.call(self.emu.hold_jobs)

    def release_jobs(self, n: int | None = None) -> None:
        """Release ``n`` held jobs (all when None), on the emulator's loop."""
        self.portal.call(self.emu.release_jobs, n)

    def interrupt_when_held(self, n: int = 1) -> threading.Thread:
        """From another thread: once ``n`` jobs are held, send SIGINT to the main thread."""
        return self.interrupt_when(self.emu.wait_jobs_held, n)

    def interrupt_when(
        self, event: Callable[..., Awaitable[object]], *args: Any
    ) -> threading.Thread:
        """From another thread: once the emulator saw ``event``, SIGINT the main thread, as
        Ctrl-C does (a real signal, which interrupts a blocked wait)."""

        def run() -> None:
            self.portal.call(event, *args)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def emu() -> Iterator[Emu]:
    """A fresh emulator on a background loop."""
    with start_blocking_portal("asyncio") as portal:
        emulator = Emulator(workers=4, fast_images=True)
        portal.call(emulator.start)
        try:
            yield Emu(portal, emulator)
        finally:
            portal.call(emulator.aclose)
    assert [] == emulator.internal_errors


def edit_input(prompt: str = "make it pixel art") -> EditImageInput:
    """An input with a real PNG as bytes (inlined as a data URI)."""
    return EditImageInput(prompt=prompt, image_urls=[PNG])


def portal_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fal_edit_async")


def test_edit_takes_the_json_mapping_and_downloads(emu: Emu, tmp_path: Path) -> None:
    """fal-client's habit, edit({...}), returns typed images that download atomically."""
    source = tmp_path / "photo.png"
    source.write_bytes(PNG)
    with emu.client() as fal:
        out = fal.edit({"prompt": "make it pixel art", "image_urls": [source]})
        files = fal.download(out, tmp_path / "out", stem="photo")
        stats = fal.statistics()

    assert isinstance(out, EditImageOutput)
    assert [tmp_path / "out" / "photo_0.png"] == [f.path for f in files]
    assert files[0].path.read_bytes().startswith(b"\x89PNG")
    assert (1, 1) == (stats.submits, emu.emu.counters.submits)


def test_a_bad_mapping_is_an_input_error_and_sends_nothing(emu: Emu) -> None:
    """A misspelt field in the mapping is an InputError before any request."""
    with emu.client() as fal:
        with pytest.raises(InputError, match="promt"):
            fal.edit({"promt": "x", "image_urls": ["https://example.com/a.png"]})
        with pytest.raises(InputError, match="input"):
            fal.submit(["not", "an", "input"])  # type: ignore[arg-type]
        assert 0 == fal.statistics().requests
    assert 0 == emu.emu.counters.requests_total


def test_handle_logs_wait_result_and_cancel(emu: Emu) -> None:
    """submit returns a handle whose log iterator, wait, result and cancel all block."""
    with emu.client() as fal:
        handle = fal.submit(edit_input())
        assert isinstance(handle, SyncJobHandle)
        lines = [entry.message for entry in handle.logs()]
        completed = handle.wait()
        out = handle.result()
        again = fal.handle(handle.request_id).result()
        outcome = fal.cancel(handle.request_id)
        status = fal.status(handle.request_id)

    assert 3 == len(lines)
    assert not completed.failed
    assert out == again
    assert "ALREADY_COMPLETED" == outcome
    assert "COMPLETED" == status.to_dict()["status"]


def test_updates_iterator_left_early_leaves_the_job_running(emu: Emu) -> None:
    """Breaking out of updates() stops following; the job goes on (it is not cancelled)."""
    emu.hold_jobs()
    with emu.client() as fal:
        handle = fal.submit(edit_input())
        for update in handle.updates():
            if "IN_PROGRESS" == update.to_dict()["status"]:
                break
        emu.release_jobs()
        assert not handle.wait().failed
    assert 0 == emu.emu.counters.cancels


def test_ctrl_c_during_edit_cancels_the_job_on_fal(emu: Emu) -> None:
    """A SIGINT while edit() waits cancels the job on fal, then raises KeyboardInterrupt."""
    emu.hold_jobs()
    with emu.client() as fal:
        emu.interrupt_when_held()
        with pytest.raises(KeyboardInterrupt):
            fal.edit(edit_input())
        (job,) = emu.emu.jobs.values()
        assert job.cancelled
        assert 1 == emu.emu.counters.cancels
        assert 1 == fal.statistics().cancels_sent
        # The client is still usable afterwards.
        emu.release_jobs()
        assert fal.edit(edit_input()).images


def test_ctrl_c_during_a_handle_wait_cancels_the_job(emu: Emu) -> None:
    """The same for handle.result(): the job is cancelled before the interrupt goes on."""
    emu.hold_jobs()
    with emu.client() as fal:
        handle = fal.submit(edit_input())
        # The job is held already: interrupt once result() follows it, not before.
        emu.interrupt_when(emu.emu.wait_status_stream_open, handle.request_id)
        with pytest.raises(KeyboardInterrupt):
            handle.result()
    assert emu.emu.jobs[handle.request_id].cancelled


def test_ctrl_c_during_a_batch_cancels_the_items_in_flight(emu: Emu, tmp_path: Path) -> None:
    """Ctrl-C while iterating edit_many cancels every job still running, on fal."""
    emu.hold_jobs()
    inputs = [edit_input(f"prompt {i}") for i in range(3)]
    with emu.client() as fal:
        emu.interrupt_when_held(3)
        results = []
        with pytest.raises(KeyboardInterrupt):
            for result in fal.edit_many(inputs, download_to=tmp_path):
                results.append(result)
    assert [] == results
    assert 3 == sum(job.cancelled for job in emu.emu.jobs.values())


def test_edit_many_is_a_plain_iterator_with_a_summary(emu: Emu, tmp_path: Path) -> None:
    """Results arrive as items finish; the summary counts them; outputs are on disk."""
    inputs = [edit_input(f"prompt {i}") for i in range(4)]
    with emu.client() as fal:
        batch = fal.edit_many(inputs, download_to=tmp_path, concurrency=2)
        results = list(batch)
        summary = batch.summary()

    assert {ItemState.COMPLETED} == {r.state for r in results}
    assert (4, 4) == (summary.completed, summary.total)
    assert 4 == len(list(tmp_path.glob("*.png")))


def test_leaving_a_batch_early_cancels_the_rest(emu: Emu) -> None:
    """break out of the loop (with the batch's with block) cancels jobs still running."""
    inputs = [edit_input(f"prompt {i}") for i in range(3)]
    with emu.client() as fal:
        emu.hold_jobs()
        with fal.edit_many(inputs) as batch:
            emu.portal.call(emu.emu.wait_jobs_held, 3)
            emu.release_jobs(1)
            for _ in batch:
                break
    assert 2 == sum(job.cancelled for job in emu.emu.jobs.values())


def test_bad_batch_settings_raise_at_the_call(emu: Emu) -> None:
    """concurrency=0 is an InputError from edit_many itself, before anything is sent."""
    with emu.client() as fal, pytest.raises(InputError, match="concurrency"):
        fal.edit_many([edit_input()], concurrency=0)
    assert 0 == emu.emu.counters.requests_total


def test_timeout_cancels_the_job(emu: Emu) -> None:
    """edit(timeout=) raises JobTimeoutError, with the job cancelled on fal."""
    emu.hold_jobs()
    with emu.client() as fal, pytest.raises(JobTimeoutError):
        fal.edit(edit_input(), timeout=0.2)
    (job,) = emu.emu.jobs.values()
    assert job.cancelled


def test_works_inside_a_running_event_loop(emu: Emu) -> None:
    """In a notebook a loop already runs in the calling thread; the Client still works."""
    fal = emu.client()

    async def cell() -> EditImageOutput:
        return fal.edit(edit_input())  # a notebook cell blocks, as requests does

    try:
        assert asyncio.run(cell()).images
    finally:
        fal.close()


def test_one_client_serves_many_threads(emu: Emu) -> None:
    """Calls from several threads at once share the client's loop and connections."""
    with emu.client() as fal, ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda i: fal.edit(edit_input(f"p{i}")), range(8)))
        assert 8 == fal.statistics().submits
    assert 8 == len({o.images[0].url for o in outputs})


def test_close_stops_the_thread_and_refuses_further_use(emu: Emu) -> None:
    """with closes the client: its thread ends, later calls raise, a second close is fine."""
    before = portal_threads()
    with emu.client() as fal:
        assert before + 1 == portal_threads()
    assert before == portal_threads()
    with pytest.raises(RuntimeError, match="closed"):
        fal.edit(edit_input())
    fal.close()


def test_a_missing_key_raises_before_a_thread_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FAL_KEY and no api_key: MissingCredentialsError naming FAL_KEY, no thread."""
    before = portal_threads()
    with pytest.raises(MissingCredentialsError, match="FAL_KEY"):
        Client(queue_url="http://127.0.0.1:9")
    assert before == portal_threads()


def test_ctrl_c_at_any_point_leaves_no_job_running(emu: Emu) -> None:
    """Attack: SIGINT at random points of an edit (before, during and after the submit,
    while following); whatever the point, no job fal accepted is left running."""
    emu.hold_jobs()
    rng = random.Random(19)
    main = threading.main_thread().ident or 0
    with emu.client() as fal:
        for i in range(20):
            timer = threading.Timer(
                rng.uniform(0, 0.03), signal.pthread_kill, (main, signal.SIGINT)
            )
            with pytest.raises(KeyboardInterrupt):
                timer.start()
                fal.edit(edit_input(f"attempt {i}"))
            timer.join()
            running = [j.request_id for j in emu.emu.jobs.values() if not j.cancelled]
            assert [] == running, f"attempt {i}"
    assert fal.statistics().submits == len(emu.emu.jobs)


def test_a_batch_left_after_one_result_keeps_the_rest_in_undelivered(
    emu: Emu, tmp_path: Path
) -> None:
    """Four items finish before the loop takes the first and breaks: the other three are
    done all the same, and ``undelivered`` holds them, once each."""
    inputs = [edit_input(f"prompt {i}") for i in range(4)]
    with emu.client() as fal:
        with fal.edit_many(inputs, download_to=tmp_path, concurrency=4) as batch:
            emu.portal.call(emu.emu.wait_until, lambda: emu.emu.counters.downloads >= 4)
            first = next(iter(batch))
        left = batch.undelivered
    assert 3 == len(left) and first.key not in {r.key for r in left}
    assert 4 == len({r.key for r in left} | {first.key})
    assert all(r.ok for r in left)


def test_close_from_a_callback_is_refused_and_leaves_the_client_whole(emu: Emu) -> None:
    """atk28 F2: close() from on_event (the client's own thread) raised "cannot join current
    thread" after it had marked the client closed: the batch ran on, and the owner's
    close() then cancelled nothing. It is refused before anything changes, saying why."""
    from fal_edit_async import ItemSubmitted

    refused: list[RuntimeError] = []
    with emu.client() as fal:

        def on_event(event: Any) -> None:
            if isinstance(event, ItemSubmitted) and not refused:
                try:
                    fal.close()
                except RuntimeError as exc:
                    refused.append(exc)

        with fal.edit_many([edit_input()], on_event=on_event) as batch:
            results = list(batch)
        status = fal.handle(results[0].request_id or "").status()

    assert 1 == len(refused) and "from a callback" in str(refused[0])
    assert results[0].ok and status is not None
