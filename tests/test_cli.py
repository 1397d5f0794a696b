"""The fal-edit command line, driven in-process against an emulator over loopback HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console

from fal_edit_async import (
    BudgetExceededError,
    ItemLog,
    ItemQueued,
    ItemResult,
    ItemStarted,
    ItemState,
    ItemSubmitted,
    JobFailedError,
    LogEntry,
    estimate_cost,
    input_from_dict,
)
from fal_edit_async._cli import main
from fal_edit_async._cli._display import LiveDisplay
from fal_edit_async._cli._report import Progress, reason
from fal_edit_async._cli._run import EMULATOR_BANNER

from .test_cli_support import clear_fal_env, emulator_thread, json_lines, plain, write_images

PROMPT = "Make this pixel-art style."


class FakeTerminal(io.StringIO):
    """A stdout that says it is a terminal, so the CLI draws its live display into it."""

    def isatty(self) -> bool:
        return True


def test_no_arguments_print_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """fal-edit without arguments prints its help with the commands and examples (exit 0)."""
    assert 0 == main([])
    out = capsys.readouterr().out
    assert "COMMAND" in out and "examples:" in out and "batch" in out


def test_emulator_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    """fal-edit emulator --help documents the port, workers and fault options."""
    with pytest.raises(SystemExit) as caught:
        main(["emulator", "--help"])
    assert 0 == caught.value.code
    out = capsys.readouterr().out
    assert "--port" in out and "--workers" in out and "--rate-limit" in out


def test_the_emulator_command_without_pillow_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without Pillow, fal-edit emulator still takes its options and fails in one line, status 2."""
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed

    # A bad --log-lines makes a run that gets past the check end at once (on another message).
    assert 2 == main(["emulator", "--log-lines", "-1"])
    err = capsys.readouterr().err
    assert "fal-edit: error: fal-edit emulator needs Pillow" in err
    assert "pip install 'fal-edit-async[emulator]'" in err


def test_an_edit_on_the_emulator_without_pillow_says_how_to_get_it(tmp_path: Path) -> None:
    """`fal-edit edit --emulator` without Pillow: one line saying what to install, status 2,
    nothing sent (it used to be "internal error: ImportError", status 1)."""
    write_images(tmp_path, "cat.png")
    code = (
        "import sys; sys.modules['PIL'] = None\n"  # as if Pillow were not installed
        "from fal_edit_async._cli import main\n"
        f"sys.exit(main(['edit', 'x', {str(tmp_path / 'cat.png')!r}, '--emulator',"
        f" '--out', {str(tmp_path / 'out')!r}]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert 2 == run.returncode, run.stderr
    assert "--emulator needs Pillow: pip install 'fal-edit-async[emulator]'" in run.stderr
    assert "internal error" not in run.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_folder_is_edited_into_image_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every image of a folder becomes a file of the asked size and format, one JSON line each."""
    write_images(tmp_path / "photos", "cat.png", "dog.png", "owl.png")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    with emulator_thread(monkeypatch, fast_images=False) as (_, emu):
        argv = ["edit", PROMPT, str(tmp_path / "photos"), "--out", str(out)]
        argv += ["--image-size", "1536x1024", "--output-format", "webp", "--quality", "low"]
        assert 0 == main(argv)
    captured = capsys.readouterr()
    records = json_lines(captured.out)
    assert ["cat", "dog", "owl"] == sorted(r["input"] for r in records)
    assert 3 == emu.counters.submits
    for record in records:
        assert "completed" == record["status"]
        assert record["request_id"] in emu.jobs
        assert record["error"] is None
        input = input_from_dict(emu.jobs[record["request_id"]].input)
        assert float(estimate_cost(input).usd) == record["cost"]
        [path] = record["outputs"]
        assert out / f"{record['input']}_0.webp" == Path(path)
        with Image.open(path) as image:
            assert ((1536, 1024), "WEBP") == (image.size, image.format)
    assert "[cat] [1/3] Preparing inputs" in captured.err
    assert "3 done of 3" in captured.err


def test_together_sends_every_input_in_one_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--together makes one job whose image_urls hold every input, named after the first."""
    a, b = write_images(tmp_path, "front.png", "back.png")
    with emulator_thread(monkeypatch) as (_, emu):
        argv = ["edit", PROMPT, str(a), str(b), "--together", "--out", str(tmp_path / "o")]
        assert 0 == main(argv)
    [record] = json_lines(capsys.readouterr().out)
    assert "front" == record["input"]
    [job] = emu.jobs.values()
    assert 2 == len(job.input["image_urls"])


def test_same_names_get_unique_keys_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two inputs called photo.png are keyed photo and photo-2, so no output overwrites another."""
    [first] = write_images(tmp_path / "a", "photo.png")
    [second] = write_images(tmp_path / "b", "photo.png")
    with emulator_thread(monkeypatch):
        assert 0 == main(["edit", PROMPT, str(first), str(second), "--out", str(tmp_path / "o")])
    records = json_lines(capsys.readouterr().out)
    assert {"photo", "photo-2"} == {r["input"] for r in records}
    assert {"photo_0.png", "photo-2_0.png"} == {p.name for p in (tmp_path / "o").iterdir()}


def test_manifest_bad_lines_fail_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad JSON, an unknown option and a missing file each fail their own line; the rest runs."""
    write_images(tmp_path / "in", "good.png")
    lines = [
        {"prompt": "pixel art", "inputs": ["in/good.png"], "quality": "low"},
        "{not json",
        {"prompt": "pixel art", "inputs": ["in/good.png"], "qualty": "low"},
        {"prompt": "pixel art", "inputs": ["in/missing.png"], "key": "lost"},
        {"prompt": "", "inputs": ["in/good.png"]},
    ]
    manifest = tmp_path / "jobs.jsonl"
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    manifest.write_text("\n".join(text) + "\n\n")
    with emulator_thread(monkeypatch) as (_, emu):
        assert 1 == main(["batch", str(manifest), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    records = {r["line"]: r for r in json_lines(captured.out)}
    assert 1 == emu.counters.submits
    assert "completed" == records[1]["status"] and "good" == records[1]["input"]
    assert {2, 3, 4, 5} == {n for n, r in records.items() if r["status"] == "failed"}
    assert "JSON object" in records[2]["error"]
    assert "qualty" in records[3]["error"]
    assert "lost" == records[4]["input"] and "missing.png" in records[4]["error"]
    assert "prompt" in records[5]["error"]
    assert "1 done, 4 failed (4 invalid input) of 5" in captured.err


def test_dry_run_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints each item's estimate and the total; the emulator sees no request."""
    [photo] = write_images(tmp_path, "lighthouse.png")
    url = "https://example.com/pics/cat.jpg?size=big"
    with emulator_thread(monkeypatch) as (_, emu):
        argv = ["edit", PROMPT, str(photo), url, "--quality", "low", "--image-size", "1024x1024"]
        assert 0 == main([*argv, "--dry-run", "--json", "--budget", "0.05"])
    assert 0 == emu.counters.submits and 0 == emu.counters.requests_total
    captured = capsys.readouterr()
    *records, total = json_lines(captured.out)
    assert {"status": "total", "items": 2, "invalid": 0, "within_budget": 1} == {
        k: total[k] for k in ("status", "items", "invalid", "within_budget")
    }
    assert ["lighthouse", "cat"] == [r["input"] for r in records]
    assert all(r["status"] == "estimate" and not r["worst_case"] for r in records)
    total = sum(Decimal(str(r["cost"])) for r in records)
    assert f"Dry run: 2 items, estimated ${total};" in captured.err
    assert "covers 1 of them" in captured.err and "Nothing was sent" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["edit", PROMPT, "there.png", "gone.png"], "no such file or folder: ", id="file"
        ),
        pytest.param(
            ["edit", PROMPT, "empty"], "no images (jpeg, jpg, png, webp) in ", id="folder"
        ),
        pytest.param(["edit", PROMPT, "ftp://host/a.png"], "not an http(s) URL: ", id="url"),
        pytest.param(["batch", "gone.jsonl"], "cannot read manifest ", id="manifest"),
        pytest.param(["edit", " ", "there.png"], "prompt: ' ' is not a non-empty", id="prompt"),
    ],
)
def test_bad_inputs_are_usage_errors(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing file, an empty folder or a bad prompt exits 2 in one line; nothing is sent."""
    write_images(tmp_path, "there.png")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with emulator_thread(monkeypatch) as (_, emu):
        assert 2 == main(argv)
    assert 0 == emu.counters.requests_total
    err = capsys.readouterr().err
    assert err.startswith(f"fal-edit: error: {message}") and 1 == len(err.splitlines())


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        pytest.param("--quality", "ultra", "invalid choice: 'ultra'", id="enum"),
        pytest.param("--num-images", "7", "invalid choice: 7", id="num-images"),
        pytest.param("--concurrency", "0", "expected a positive number", id="concurrency"),
        pytest.param("--budget", "lots", "expected a positive number", id="budget"),
        pytest.param("--frobnicate", "1", "unrecognized arguments", id="unknown"),
    ],
)
def test_bad_flags_exit_2_with_a_message(
    flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value is an argparse usage error: exit 2 and a message naming the problem."""
    with pytest.raises(SystemExit) as caught:
        main(["edit", PROMPT, "photo.png", flag, value])
    assert 2 == caught.value.code
    assert expected in capsys.readouterr().err


def test_no_key_exits_2_naming_fal_key_and_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without FAL_KEY and without --emulator nothing runs: exit 2, and the message says both."""
    clear_fal_env(monkeypatch)
    [photo] = write_images(tmp_path, "photo.png")
    assert 2 == main(["edit", PROMPT, str(photo)])
    err = capsys.readouterr().err
    assert "FAL_KEY" in err and "--emulator" in err
    assert 1 == len(err.splitlines())


def test_wrong_key_exits_2_and_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key fal rejects stops the run with exit 2; the key appears nowhere, even with --debug."""
    [photo] = write_images(tmp_path, "photo.png")
    with emulator_thread(monkeypatch, api_key="the-right-key") as (_, emu):
        monkeypatch.setenv("FAL_KEY", "wrong-secret-key-123")
        assert 2 == main(["edit", PROMPT, str(photo), "--debug", "--out", str(tmp_path / "out")])
    assert 0 == emu.counters.submits
    captured = capsys.readouterr()
    assert "FAL_KEY" in captured.err
    assert "wrong-secret-key-123" not in captured.out + captured.err


def test_budget_stops_submitting_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Items whose estimate would cross --budget are not submitted, and the run exits 1."""
    write_images(tmp_path / "in", "a.png", "b.png", "c.png")
    with emulator_thread(monkeypatch) as (_, emu):
        argv = ["edit", PROMPT, str(tmp_path / "in"), "--quality", "low", "--concurrency", "1"]
        argv += ["--image-size", "1024x1024", "--no-download"]
        assert 1 == main([*argv, "--budget", "0.05"])  # $0.03 each
    assert 1 == emu.counters.submits
    records = sorted(json_lines(capsys.readouterr().out), key=lambda r: r["status"])
    assert ["completed", "not_submitted", "not_submitted"] == [r["status"] for r in records]
    assert records[0]["outputs"][0].startswith(emu.cdn_url)  # URLs: nothing downloaded
    assert "budget" in records[1]["error"]


def test_model_refusal_is_a_failed_item_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused prompt fails its item (exit 1) and the summary names why; the others finish."""
    write_images(tmp_path / "in", "a.png", "b.png")
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(lambda: emu.schedule_fault("job", "model_failure"))
        assert 1 == main(["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    statuses = sorted(r["status"] for r in json_lines(captured.out))
    assert ["completed", "failed"] == statuses
    assert "1 done, 1 failed (1 content_policy_violation) of 2" in captured.err


@pytest.mark.parametrize(
    ("error_type", "detail", "expected"),
    [
        pytest.param("runner_error", {"detail": "x"}, "runner_error", id="error-type-first"),
        pytest.param(
            None,
            {"detail": [{"loc": ["body", "prompt"], "type": "value_error.missing"}]},
            "value_error.missing",
            id="field-error-type",
        ),
        pytest.param(None, {"detail": "prompt is too long"}, "value_error", id="detail-string"),
        pytest.param(
            None, {"detail": ["junk", {"type": ""}, {"type": "t"}]}, "t", id="first-with-a-type"
        ),
        pytest.param(None, {"error": "x"}, "job failed", id="no-detail"),
        pytest.param(None, "Internal Server Error", "job failed", id="text-body"),
        pytest.param(None, None, "job failed", id="no-body"),
    ],
)
def test_failure_reason_names_the_models_error_type(
    error_type: str | None, detail: Any, expected: str
) -> None:
    """A failed job's summary reason is fal's error type, else its first field error's type."""
    error = JobFailedError(request_id="r", error="no", error_type=error_type, detail=detail)

    assert expected == reason(error)


def test_failure_reason_of_other_errors() -> None:
    """Over-budget items say so; any other error is named by its class."""
    over = BudgetExceededError(estimate=0.3, spent=1.0, budget=1.0)

    assert ["over budget", "ValueError"] == [reason(over), reason(ValueError("x"))]


def test_timeout_cancels_the_jobs_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--timeout stops the run with exit 1 and cancels on fal every job it leaves behind."""
    write_images(tmp_path / "in", "a.png", "b.png")
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(emu.hold_jobs)
        assert 1 == main(["edit", PROMPT, str(tmp_path / "in"), "--timeout", "0.3"])
        assert 2 == emu.counters.cancels
    captured = capsys.readouterr()
    assert "Timed out after 0.3 s: fal accepted the cancel of 2 jobs." in captured.err
    # fal answered CANCELLATION_REQUESTED: best effort, so the jobs are interrupted, not done
    assert ["interrupted", "interrupted"] == [r["status"] for r in json_lines(captured.out)]


def test_journal_run_again_pays_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command run again with --journal resumes every item without a new submit."""
    write_images(tmp_path / "in", "a.png", "b.png")
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    argv += ["--journal", str(tmp_path / "run.journal")]
    with emulator_thread(monkeypatch) as (_, emu):
        assert 0 == main(argv)
        first = json_lines(capsys.readouterr().out)
        assert 0 == main(argv)
        assert 2 == emu.counters.submits
    captured = capsys.readouterr()
    again = json_lines(captured.out)
    assert {r["request_id"] for r in first} == {r["request_id"] for r in again}
    assert all(r["resumed"] for r in again)
    assert "2 done (2 from the journal) of 2" in captured.err


def test_emulator_flag_says_so_first_and_needs_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--emulator runs without any key, its banner is the first line, and records say emulator."""
    clear_fal_env(monkeypatch)
    [photo] = write_images(tmp_path, "photo.png")
    assert 0 == main(
        ["edit", PROMPT, str(photo), "--emulator", "--json", "--out", str(tmp_path / "out")]
    )
    captured = capsys.readouterr()
    assert EMULATOR_BANNER == captured.err.splitlines()[0]
    [record] = json_lines(captured.out)
    assert record["emulator"] is True and "completed" == record["status"]


def test_live_display_streams_logs_labelled_by_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the display shows the banner first, each log line as [input], and results."""
    clear_fal_env(monkeypatch)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("TERM", "xterm-256color")
    a, b = write_images(tmp_path, "harbour.png", "beach.png")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert 0 == main(["edit", PROMPT, str(a), str(b), "--emulator", "--out", str(tmp_path / "o")])
    shown = plain(terminal.getvalue())
    assert shown.startswith("EMULATOR:")
    for name in ("harbour", "beach"):
        assert f"[{name}] [1/3] Preparing inputs" in shown
        assert f"[{name}] [3/3] Encoding outputs" in shown
        assert f"✓ {name} → {tmp_path / 'o' / name}_0.png" in shown
    assert "2 done of 2" in shown


def test_terminal_without_rich_gets_plain_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the cli extra a terminal still gets log lines labelled by input and a result."""
    [photo] = write_images(tmp_path, "harbour.png")
    terminal = FakeTerminal()
    with emulator_thread(monkeypatch):
        monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails, as when missing
        monkeypatch.setattr(sys, "stdout", terminal)
        assert 0 == main(["edit", PROMPT, str(photo), "--out", str(tmp_path / "o")])
    lines = terminal.getvalue().splitlines()
    assert "[harbour] [1/3] Preparing inputs" == lines[0]
    assert f"✓ harbour → {tmp_path / 'o' / 'harbour_0.png'}  [1/1]" in lines
    assert lines[-1].startswith("1 done of 1")


def test_display_shows_queue_positions_and_running_jobs() -> None:
    """The display's bottom lines count jobs in flight and show each one's state."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    progress = Progress(3, {"cat": Decimal("0.27"), "dog": Decimal("0.27")})
    display = LiveDisplay(progress, console)
    for event in (
        ItemSubmitted(key="cat", request_id="req-cat"),
        ItemSubmitted(key="dog", request_id="req-dog"),
        ItemQueued(key="cat", request_id="req-cat", position=2),
        ItemStarted(key="dog", request_id="req-dog"),
        ItemLog(key="dog", request_id="req-dog", entry=LogEntry(message="step 1")),
    ):
        progress.on_event(event)
        display.event(event)
    console.print(display.render())
    shown = plain(console.file.getvalue())  # type: ignore[attr-defined]
    assert "[dog] step 1" in shown
    assert "0/3" in shown and "2 in flight (1 queued)" in shown
    assert "~$0.00 spent by this run, ~$0.54 in flight" in shown
    assert "queued #3" in shown and "req-cat" in shown
    assert "running" in shown and "req-dog" in shown


def test_journal_with_in_process_emulator_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--journal with --emulator exits 2: those jobs could never be re-attached."""
    write_images(tmp_path / "in", "a.png")
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--emulator", "--journal", str(tmp_path / "j")]

    assert 2 == main(argv)

    assert "FAL_QUEUE_URL" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()


def test_the_summary_tells_unknown_and_interrupted_apart_from_failed() -> None:
    """A lost submit answer and a job left in flight are named as such, not counted failed."""
    progress = Progress(5, clock=lambda: 0.0)
    for state in (ItemState.COMPLETED, ItemState.UNKNOWN, ItemState.INTERRUPTED):
        progress.on_result(ItemResult(key=state.value, index=0, state=state))
    progress.on_result(ItemResult(key="x", index=0, state=ItemState.CANCELLED))

    line = progress.summary()

    assert line.startswith("1 done, 1 cancelled, 1 unknown, 1 interrupted, 1 not started of 5")
    assert "failed" not in line


def test_an_out_folder_holding_the_inputs_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out where the inputs are: exit 2 before anything is sent (outputs would be re-fed)."""
    with emulator_thread(monkeypatch) as (_, emu):
        write_images(tmp_path / "photos", "shot.png", "shot_1.png")
        argv = ["edit", PROMPT, str(tmp_path / "photos"), "--out", str(tmp_path / "photos")]
        assert 2 == main(argv)
        assert 0 == emu.counters.submits
    assert "holds the input" in capsys.readouterr().err


def test_the_default_out_folder_is_edited_never_the_inputs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run in the inputs' folder with no --out: outputs go to ./edited, inputs untouched, and
    each JSON line says which input became which file."""
    with emulator_thread(monkeypatch):
        [shot, shot_1] = write_images(tmp_path, "shot.png", "shot_1.png")
        before = shot_1.read_bytes()
        monkeypatch.chdir(tmp_path)
        assert 0 == main(["edit", PROMPT, "shot.png", "shot_1.png", "--json"])
    assert before == shot_1.read_bytes()
    assert {"shot_0.png", "shot_1_0.png"} == {p.name for p in (tmp_path / "edited").iterdir()}
    records = {r["input"]: r for r in json_lines(capsys.readouterr().out)}
    assert ["shot_1.png"] == [Path(s).name for s in records["shot_1"]["sources"]]
    assert ["shot_1_0.png"] == [Path(o).name for o in records["shot_1"]["outputs"]]
    assert shot.exists()


@pytest.mark.parametrize("journal", [None, Path("run.journal")])
def test_interrupted_jobs_are_summed_up_as_interrupted_not_cancelled(journal: Path | None) -> None:
    """Jobs a stopped run left behind carry a JobCancelledError whatever fal answered: the
    summary said "4 items interrupted (cancelled)" when fal never answered the cancels."""
    from types import SimpleNamespace

    from fal_edit_async import ItemResult, ItemState, JobCancelledError
    from fal_edit_async._cli._run import _failure_lines

    progress = Progress(5)
    for n in range(4):
        error = JobCancelledError(f"r{n}", "fal did not answer the cancel")
        progress.on_result(
            ItemResult(
                key=f"k{n}", index=n, state=ItemState.INTERRUPTED, error=error, request_id=f"r{n}"
            )
        )
    run = SimpleNamespace(options=SimpleNamespace(journal=journal), progress=progress)
    lines = _failure_lines(run)  # type: ignore[arg-type]
    again = "run again with the same --journal: it picks up where this run stopped"
    step = again if journal else "`fal-edit result r0 --out DIR` fetches it"
    if journal:
        assert ["Not done:", f"  4 items interrupted: {step}"] == lines
    else:  # each has its own request id to fetch by: listed one by one
        assert 5 == len(lines) and all("(cancelled)" not in line for line in lines)
        assert lines[1] == f"  ✗ k0 interrupted: fal did not answer the cancel → {step}"


def test_an_ambiguous_row_is_not_told_that_resubmit_unknown_submits_it() -> None:
    """`ambiguous` rows are never submitted again (guarantees.md), yet were told
    "--resubmit-unknown submits it again" and `fal-edit status REQUEST_ID` (atk13)."""
    from fal_edit_async import ItemResult, ItemState, UnknownSubmitError
    from fal_edit_async._cli._messages import next_step

    def step(error: UnknownSubmitError, request_id: str | None = None) -> str:
        result = ItemResult(
            key="k", index=0, state=ItemState.UNKNOWN, error=error, request_id=request_id
        )
        return next_step(result, "unknown", journal=True, line=None)

    ambiguous = step(UnknownSubmitError("2 requests match", ambiguous=True))
    assert "never submitted again" in ambiguous
    assert "REQUEST_ID" not in ambiguous and "submits it again" not in ambiguous
    lost = step(UnknownSubmitError("answer lost"))
    assert "--resubmit-unknown submits it again" in lost and "REQUEST_ID" not in lost
    assert "`fal-edit status r1`" in step(UnknownSubmitError("answer lost"), "r1")
    # atk20 N4: the journal's way to find the job comes before the flag that pays again.
    assert lost.index("`fal-edit reconcile JOURNAL`") < lost.index("--resubmit-unknown")
    alone = ItemResult(key="k", index=0, state=ItemState.UNKNOWN, error=UnknownSubmitError("x"))
    assert "reconcile" not in next_step(alone, "unknown", journal=False, line=None)
    # atk23 F5: a row naming another row's job is the journal's to fix; no flag pays for it.
    from fal_edit_async import JournalError

    held = ItemResult(key="k", index=0, state=ItemState.UNKNOWN, error=JournalError("rows"))
    fix = next_step(held, "unknown", journal=True, line=None)
    assert "fix the journal rows" in fix and "--resubmit-unknown" not in fix


def test_items_that_finish_as_the_run_stops_are_reported_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run stops at its first result while three more are finished and waiting: those
    three are done (downloaded, journaled), and the run says so, one JSON line each. atk13
    saw "0 done, 8 not started" here."""
    import anyio.to_thread

    from fal_edit_async import Batch
    from fal_edit_async._cli import _run

    write_images(tmp_path / "in", "a.png", "b.png", "c.png", "d.png")
    real_iter, real_take = Batch.__aiter__, _run._take

    with emulator_thread(monkeypatch) as (portal, emu):

        async def late_first(batch: Batch) -> Any:
            async for result in real_iter(batch):
                # Let every item finish before the first result is taken (the emulator's
                # loop runs in its thread; this loop goes on with the downloads meanwhile).
                await anyio.to_thread.run_sync(
                    portal.call, emu.wait_until, lambda: emu.counters.downloads >= 4
                )
                await anyio.wait_all_tasks_blocked()
                yield result

        def stop_at_first(run: Any, scope: Any, result: Any) -> None:
            real_take(run, scope, result)
            run.interrupted = True  # as the first Ctrl-C does
            scope.cancel()

        monkeypatch.setattr(Batch, "__aiter__", late_first)
        monkeypatch.setattr(_run, "_take", stop_at_first)
        argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
        assert 130 == main([*argv, "--journal", str(tmp_path / "j"), "--concurrency", "4"])
        assert 4 == emu.counters.submits
    captured = capsys.readouterr()
    records = json_lines(captured.out)
    assert ["a", "b", "c", "d"] == sorted(r["input"] for r in records)
    assert {"done"} == {r["outcome"] for r in records}
    assert "4 done" in captured.err
    assert 4 == len(list((tmp_path / "out").iterdir()))
