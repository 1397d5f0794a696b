"""fal-edit as a separate process: the README's main command, and Ctrl-C during a batch."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from PIL import Image

from fal_edit_async import AsyncClient, EditImageInput
from fal_edit_async.emulator import Emulator, Faults
from fal_edit_async.emulator._serve import banner

from ._cli_runs import edit_args
from .test_cli_support import json_lines, write_images

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/lighthouse.png"
PROMPT = "Make this pixel-art style."


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    return {**env, **values}


def _fal_env(emu: Emulator) -> Mapping[str, str]:
    return _env(FAL_KEY=emu.api_key, FAL_QUEUE_URL=emu.queue_url, FAL_REST_URL=emu.rest_url)


def test_readme_main_command_works_as_written(tmp_path: Path) -> None:
    """The README's `fal-edit edit ... examples/lighthouse.png --emulator --out out/` works."""
    command = [sys.executable, "-m", "fal_edit_async", "edit", PROMPT, EXAMPLE, "--emulator"]
    out = tmp_path / "out"
    done = subprocess.run(
        [*command, "--out", f"{out}/"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert done.stderr.startswith("EMULATOR: using a local fal emulator, not fal.ai.")
    [record] = json_lines(done.stdout)
    assert ("lighthouse", "completed", True) == (
        record["input"],
        record["status"],
        record["emulator"],
    )
    assert [str(out / "lighthouse_0.png")] == record["outputs"]
    with Image.open(out / "lighthouse_0.png") as image, Image.open(REPO / EXAMPLE) as source:
        assert ("PNG", (1024, 1024)) == (image.format, image.size)
        assert image.convert("RGB").resize(source.size) != source.convert("RGB")


async def _run_until_cancelling(
    emu: Emulator, tmp_path: Path, jobs: int
) -> tuple[Process, list[str]]:
    """Start a CLI batch of ``jobs`` held jobs, and send SIGINT once all are in flight."""
    write_images(tmp_path / "in", *(f"p{n}.png" for n in range(jobs)))
    command = [sys.executable, "-m", "fal_edit_async", "edit", PROMPT, str(tmp_path / "in")]
    process = await anyio.open_process(
        [*command, "--out", str(tmp_path / "out"), "--concurrency", str(jobs)],
        env=_fal_env(emu),
    )
    await emu.wait_in_flight(jobs)
    await emu.wait_until(lambda: emu.counters.streams_opened >= jobs)
    process.send_signal(signal.SIGINT)
    return process, list(emu.jobs)


async def _output(process: Process) -> tuple[str, str]:
    assert process.stdout is not None and process.stderr is not None
    out = b"".join([chunk async for chunk in process.stdout])
    err = b"".join([chunk async for chunk in process.stderr])
    return out.decode(), err.decode()


async def test_ctrl_c_cancels_the_jobs_on_fal(emulator: Emulator, tmp_path: Path) -> None:
    """SIGINT cancels every in-flight job on fal, says how many, and exits 130."""
    emulator.hold_jobs()
    process, request_ids = await _run_until_cancelling(emulator, tmp_path, 3)
    async with process:
        out, err = await _output(process)
        assert 130 == await process.wait()
    assert 3 == emulator.counters.cancels
    assert all(emulator.jobs[r].cancelled for r in request_ids)
    assert "Ctrl-C: cancelling 3 jobs on fal" in err
    assert "Interrupted: fal accepted the cancel of 3 jobs." in err
    records = json_lines(out)
    assert sorted(request_ids) == sorted(r["request_id"] for r in records)
    assert {"interrupted"} == {r["status"] for r in records}  # fal took the cancels: best effort


async def test_ctrl_c_on_a_hung_result_says_the_job_had_finished(
    emulator: Emulator, tmp_path: Path
) -> None:
    """atk23: Ctrl-C while a finished job's result GET hangs sends no cancel, and said "fal
    did not answer the cancel"; it says the job had finished on fal now."""
    emulator.schedule_fault("result", "slow_response", delay=60)
    write_images(tmp_path / "in", "p0.png")
    command = [sys.executable, "-m", "fal_edit_async", "edit", PROMPT, str(tmp_path / "in")]
    process = await anyio.open_process(
        [*command, "--out", str(tmp_path / "out")], env=_fal_env(emulator)
    )
    async with process:
        await emulator.wait_slow_held(1)
        process.send_signal(signal.SIGINT)
        out, err = await _output(process)
        assert 130 == await process.wait()
    (record,) = json_lines(out)
    assert "interrupted" == record["status"]
    assert "the job had finished on fal" in record["error"], record
    assert "did not answer the cancel" not in out + err
    assert "interrupted: interrupted" not in err
    # atk24 F5: no cancel was sent, and the finished job is spent, not "may still run".
    assert "Interrupted: no cancel was sent" in err and "may still run" not in err
    assert "~$0.27 spent by this run" in err
    assert 0 == emulator.counters.cancels


async def test_ctrl_c_on_a_re_attached_jobs_hung_result_counts_it_for_the_earlier_run(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A rerun re-attaches a job the first run paid for, and is stopped while its result
    hangs: the job is the first run's spending, not this one's."""
    write_images(tmp_path / "in", "p0.png")
    command = [sys.executable, "-m", "fal_edit_async", "edit", PROMPT, str(tmp_path / "in")]
    command += ["--out", str(tmp_path / "out"), "--journal", str(tmp_path / "j")]
    for run in range(2):
        emulator.schedule_fault("result", "slow_response", delay=60)
        async with await anyio.open_process(command, env=_fal_env(emulator)) as process:
            await emulator.wait_slow_held(run + 1)
            process.send_signal(signal.SIGINT)
            _, err = await _output(process)
            assert 130 == await process.wait()
    assert "~$0.00 spent by this run, ~$0.27 by earlier runs" in err, err
    assert 1 == emulator.counters.submits


@pytest.mark.timeout(30)
async def test_second_ctrl_c_exits_at_once(emulator: Emulator, tmp_path: Path) -> None:
    """While the cancels hang, a second SIGINT exits 130 at once, naming the jobs left on fal."""
    emulator.hold_jobs()
    emulator.schedule_fault("cancel", "slow_response", times=2, delay=60)
    process, request_ids = await _run_until_cancelling(emulator, tmp_path, 2)
    async with process:
        await emulator.wait_slow_held(2)
        process.send_signal(signal.SIGINT)
        out, err = await _output(process)
        assert 130 == await process.wait()
    assert "Interrupted again: exiting now." in err
    assert all(r in err for r in request_ids)
    assert "" == out


async def test_ctrl_c_while_following_logs_never_cancels_the_job(
    emulator: Emulator, client: AsyncClient, png_bytes: bytes
) -> None:
    """Ctrl-C on `logs --follow` only stops watching: exit 130, and the job runs on."""
    emulator.hold_jobs()
    handle = await client.submit(EditImageInput(prompt=PROMPT, image_urls=[png_bytes]))
    command = [sys.executable, "-m", "fal_edit_async", "logs", handle.request_id, "--follow"]
    async with await anyio.open_process(command, env=_fal_env(emulator)) as process:
        assert process.stdout is not None
        first = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 1000)
        assert first.decode().endswith("INFO [1/3] Preparing inputs")
        process.send_signal(signal.SIGINT)
        _, err = await _output(process)
        assert 130 == await process.wait()
    assert "fal-edit: interrupted\n" == err
    assert 0 == emulator.counters.cancels
    assert not emulator.jobs[handle.request_id].cancelled


def _pasted(lines: list[str]) -> dict[str, str]:
    """The variables of the ``export`` lines a user pastes from ``fal-edit emulator``."""
    pairs = [shlex.split(line.strip().removeprefix("export "))[0] for line in lines]
    assert all(line.strip().startswith("export ") for line in lines)
    return dict(pair.split("=", 1) for pair in pairs)


async def test_the_emulators_export_lines_let_a_rerun_settle_a_lost_submit(
    tmp_path: Path,
) -> None:
    """A submit fal queued but answered with a bare 504 is `unknown`; a rerun configured by
    the banner's export lines alone finds it in the request history and adopts it: one job
    billed, the file on disk. Without FAL_API_URL among them, the history was looked up at
    api.fal.ai, the row stayed unknown, and --resubmit-unknown paid twice."""
    write_images(tmp_path / "in", "cat.png")
    faults = Faults(gateway_timeout_after_queue=1.0)
    async with Emulator(workers=2, fast_images=True, faults=faults) as emu:
        exports = [line for line in banner(emu) if line.strip().startswith("export ")]
        env = _env(**_pasted(exports))
        assert {"FAL_KEY", "FAL_QUEUE_URL", "FAL_REST_URL", "FAL_API_URL"} <= set(env)
        command = [sys.executable, "-m", "fal_edit_async", *edit_args(tmp_path)]
        first = await anyio.run_process(command, env=env, check=False)
        assert 1 == first.returncode, first.stderr.decode()
        assert ["unknown"] == [r["status"] for r in json_lines(first.stdout.decode())[:1]]
        again = await anyio.run_process(command, env=env, check=False)
        assert 0 == again.returncode, again.stderr.decode()
        assert 1 == emu.counters.submits
        assert 1 == sum(1 for job in emu.jobs.values() if job.billed)
        assert [] == emu.internal_errors
    assert ["cat_0.png"] == sorted(p.name for p in (tmp_path / "out").iterdir())


async def test_ctrl_c_with_only_submits_in_flight_says_they_will_be_cancelled(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Ctrl-C while fal has not yet answered any submit: the notice does not say "cancelling
    0 jobs" (atk12 saw that, then "fal accepted the cancel of 6 jobs"); each job is
    cancelled once its submit is answered."""
    emulator.schedule_fault("submit", "slow_response", times=2, delay=60)
    write_images(tmp_path / "in", "p0.png", "p1.png")
    command = [sys.executable, "-m", "fal_edit_async", "edit", PROMPT, str(tmp_path / "in")]
    command += ["--out", str(tmp_path / "out"), "--concurrency", "2"]
    async with await anyio.open_process(command, env=_fal_env(emulator)) as process:
        assert process.stderr is not None
        await emulator.wait_slow_held(2)
        process.send_signal(signal.SIGINT)
        stderr = BufferedByteReceiveStream(process.stderr)
        notice = ""
        while "Ctrl-C" not in notice:
            notice = (await stderr.receive_until(b"\n", 65536)).decode()
        emulator.release_slow()
        assert 130 == await process.wait()
    assert notice.startswith("Ctrl-C: stopping; any submit in flight is cancelled once fal")
    assert "cancelling 0 jobs" not in notice
    assert 2 == emulator.counters.cancels
    assert all(job.cancelled for job in emulator.jobs.values())
