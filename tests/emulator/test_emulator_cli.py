"""``python -m fal_edit_async.emulator``: serves in the foreground until a signal."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

import aiohttp
import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from fal_edit_async.emulator._cli import _emulator, add_arguments, main


async def test_serves_until_sigint() -> None:
    """The first lines name the queue URL, CDN URL and key; SIGINT stops it with status 0."""
    command = [
        sys.executable,
        "-m",
        "fal_edit_async.emulator",
        "--processing-time",
        "0",
        "--api-key",
        "cli-key",
        "--rate-limit",
        "0.0",
    ]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        lines = [(await stdout.receive_until(b"\n", 4096)).decode() for _ in range(4)]
        queue_url = lines[0].split(": ", 1)[1].strip()
        assert lines[0].startswith("emulator queue URL: http://127.0.0.1:")
        assert lines[1].startswith("emulator CDN URL:")
        assert "cli-key" in lines[2]
        assert "not the real service" in lines[3]
        async with aiohttp.ClientSession() as http:
            async with http.get(queue_url + "/a/b/requests/x/status") as resp:
                assert 401 == resp.status
            headers = {"Authorization": "Key cli-key"}
            async with http.get(queue_url + "/a/b/requests/x/status", headers=headers) as resp:
                assert 404 == resp.status
        process.send_signal(signal.SIGINT)
        assert 0 == await process.wait()
        rest = b""
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                rest += await stdout.receive()
        assert b"emulator stopped" in rest


def test_bad_options_exit_with_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A rate outside 0..1 is an argparse error (exit status 2)."""
    with pytest.raises(SystemExit) as caught:
        main(["--rate-limit", "2"])
    assert 2 == caught.value.code
    assert "rate" in capsys.readouterr().err


def test_no_retryable_header_option() -> None:
    """--no-retryable-header turns off X-Fal-Retryable; by default it is sent."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    assert parser.parse_args([]).retryable_header
    assert not parser.parse_args(["--no-retryable-header"]).retryable_header


def test_cancel_running_option() -> None:
    """--cancel-running takes honour (the default), ignore, or a probability from 0 to 1."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    assert "honour" == parser.parse_args([]).cancel_running
    assert "ignore" == parser.parse_args(["--cancel-running", "ignore"]).cancel_running
    assert 0.25 == parser.parse_args(["--cancel-running", "0.25"]).cancel_running
    for bad in ("sometimes", "1.5"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--cancel-running", bad])


def test_result_ttl_option() -> None:
    """--result-ttl sets the seconds results are kept; by default they are kept for ever."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    assert parser.parse_args([]).result_ttl is None
    assert 360.0 == parser.parse_args(["--result-ttl", "360"]).result_ttl


def test_negative_result_ttl_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A negative --result-ttl is refused with exit status 2 before anything is served."""
    assert 2 == main(["--result-ttl", "-1"])
    assert "result_ttl" in capsys.readouterr().err


def test_new_fault_rates_reach_the_emulator() -> None:
    """--server-error-after-queue and --result-in-progress set the matching Faults rates."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--server-error-after-queue", "0.1", "--result-in-progress", "0.2"])

    faults = _emulator(args).faults
    assert (0.1, 0.2) == (faults.server_error_after_queue, faults.result_in_progress)


async def test_banner_prints_export_lines_for_a_key_it_requires() -> None:
    """Without --api-key the banner's key is the only one accepted; its export lines set
    FAL_QUEUE_URL, FAL_REST_URL, FAL_API_URL and FAL_KEY; --verbose logs each request it
    answers."""
    command = [sys.executable, "-m", "fal_edit_async.emulator", "--verbose"]
    async with await anyio.open_process(command) as process:
        try:
            assert process.stdout is not None
            stdout = BufferedByteReceiveStream(process.stdout)
            lines = [(await stdout.receive_until(b"\n", 4096)).decode()]
            while lines[-1] != "Ctrl-C to stop.":
                lines.append((await stdout.receive_until(b"\n", 4096)).decode())
            exports = dict(
                line.strip().removeprefix("export ").split("=", 1)
                for line in lines
                if line.strip().startswith("export ")
            )
            assert {"FAL_QUEUE_URL", "FAL_REST_URL", "FAL_API_URL", "FAL_KEY"} == set(exports)
            assert exports["FAL_API_URL"] == exports["FAL_REST_URL"]  # history is served there
            key = exports["FAL_KEY"]
            assert f"{key} (the only key it accepts)" in lines[2]
            status = exports["FAL_QUEUE_URL"] + "/a/b/requests/x/status"
            async with aiohttp.ClientSession() as http:
                async with http.get(status, headers={"Authorization": "Key other"}) as resp:
                    assert 401 == resp.status
                async with http.get(status, headers={"Authorization": f"Key {key}"}) as resp:
                    assert 404 == resp.status
            logged = (await stdout.receive_until(b"\n", 4096)).decode()
            assert logged.endswith(" GET /a/b/requests/x/status 401")
            process.send_signal(signal.SIGINT)
            assert 0 == await process.wait()
        finally:
            if process.returncode is None:  # a failed check must not wait on the server
                process.kill()


def test_help_names_the_rest_url_and_a_bad_port_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--help says FAL_REST_URL (uploads of big files go there); --port 80000 exits 2."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "FAL_REST_URL" in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:
        main(["--port", "80000"])
    assert 2 == caught.value.code
    assert "a port is a number from 0 to 65535, got 80000" in capsys.readouterr().err
