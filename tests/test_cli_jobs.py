"""fal-edit status, logs, result and cancel: re-attaching to jobs on the emulator by request id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal
from PIL import Image

from fal_edit_async._cli import main
from fal_edit_async.emulator import Emulator

from .test_cli_support import emulator_thread, submit_job


def test_status_shows_queue_position_then_completion(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """status prints IN_QUEUE with the requests ahead, as text or JSON, then COMPLETED."""
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(emu.hold_queue)
        first, second = submit_job(portal, emu), submit_job(portal, emu)
        assert 0 == main(["status", second])
        assert "IN_QUEUE (1 request ahead)\n" == capsys.readouterr().out
        assert 0 == main(["status", second, "--json"])
        payload = json.loads(capsys.readouterr().out)
        assert {"status": "IN_QUEUE", "queue_position": 1} == {
            k: payload[k] for k in ("status", "queue_position")
        }
        portal.call(emu.release_queue)
        portal.call(emu.wait_completed, 2)
        assert 0 == main(["status", first, "--logs"])
    lines = capsys.readouterr().out.splitlines()
    assert "COMPLETED" == lines[0]
    assert lines[1].endswith("INFO [1/3] Preparing inputs")


async def _log_and_release(emu: Emulator, request_id: str) -> None:
    await emu.wait_status_stream_open(request_id)
    emu.add_log(request_id, "a line added while following")
    emu.release_jobs()


def test_logs_follow_streams_until_completion(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """logs --follow prints every line as it arrives and ends when the job completes."""
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(emu.hold_jobs)
        request_id = submit_job(portal, emu)
        portal.call(emu.wait_jobs_held, 1)
        portal.start_task_soon(_log_and_release, emu, request_id)
        assert 0 == main(["logs", request_id, "--follow"])
    captured = capsys.readouterr()
    messages = [line.split(" ", 2)[2] for line in captured.out.splitlines()]
    assert [
        "[1/3] Preparing inputs",
        "[2/3] Editing image",
        "[3/3] Encoding outputs",
        "a line added while following",
    ] == messages
    assert "COMPLETED\n" == captured.err
    assert 0 == emu.counters.cancels


def test_logs_of_a_failed_job_exit_1_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """logs --follow --json prints JSON lines and exits 1 when the job ended with an error."""
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(lambda: emu.schedule_fault("job", "model_failure", error_type="internal_error"))
        request_id = submit_job(portal, emu)
        assert 1 == main(["logs", request_id, "--follow", "--json"])
    captured = capsys.readouterr()
    assert "[1/3] Preparing inputs" == json.loads(captured.out.splitlines()[0])["message"]
    assert "COMPLETED with an error" in captured.err and "internal_error" in captured.err


def _wait_done(portal: BlockingPortal, emu: Emulator, request_id: str) -> None:
    portal.call(emu.wait_for_state, request_id, "COMPLETED")


def test_result_prints_the_output_and_downloads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """result prints the output JSON; with --out the images land there and open."""
    with emulator_thread(monkeypatch) as (portal, emu):
        request_id = submit_job(portal, emu)
        _wait_done(portal, emu, request_id)
        assert 0 == main(["result", request_id, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    [image] = json.loads(captured.out)["images"]
    assert image["url"].startswith(emu.cdn_url)
    path = tmp_path / f"{request_id}_0.png"
    assert f"saved {path}\n" == captured.err
    with Image.open(path) as opened:
        assert "PNG" == opened.format


def test_result_timeout_leaves_the_job_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """result --timeout stops waiting with exit 1 and never cancels the job it watched."""
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(emu.hold_jobs)
        request_id = submit_job(portal, emu)
        assert 1 == main(["result", request_id, "--timeout", "0.2"])
        assert 0 == emu.counters.cancels
        assert not emu.jobs[request_id].cancelled
    assert f"still on fal (fal-edit status {request_id})" in capsys.readouterr().err


def test_result_of_a_refused_job_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job the model refused makes result exit 1 with one line naming the request id."""
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(lambda: emu.schedule_fault("job", "model_failure"))
        request_id = submit_job(portal, emu)
        assert 1 == main(["result", request_id])
    err = capsys.readouterr().err
    assert 1 == len(err.splitlines())
    assert err.startswith("fal-edit: error: ") and request_id in err


def test_cancel_then_cancel_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """cancel stops a running job (exit 0); a second cancel finds it completed (exit 1)."""
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(emu.hold_jobs)
        request_id = submit_job(portal, emu)
        portal.call(emu.wait_in_flight, 1)
        assert 0 == main(["cancel", request_id])
        _wait_done(portal, emu, request_id)
        assert 1 == main(["cancel", request_id, "--json"])
    out = capsys.readouterr().out.splitlines()
    assert f"{request_id}: cancellation requested" == out[0]
    assert {"request_id": request_id, "outcome": "ALREADY_COMPLETED"} == json.loads(out[1])
    assert emu.jobs[request_id].cancelled and 2 == emu.counters.cancels


def test_unknown_request_id_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """status of a request fal does not know exits 1 with a one-line error."""
    with emulator_thread(monkeypatch):
        assert 1 == main(["status", "00000000-0000-0000-0000-000000000000"])
    err = capsys.readouterr().err
    assert 1 == len(err.splitlines()) and "404" in err
