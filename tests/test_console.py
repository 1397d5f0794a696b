"""The console tells the truth (issue 18): one test per finding, driven in-process against
an emulator over loopback HTTP, or on the pure parts (progress, messages, schema, report)."""

from __future__ import annotations

import argparse
import io
import json
import re
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from fal_edit_async import (
    BudgetExceededError,
    DownloadError,
    InputError,
    ItemCompleted,
    ItemQueued,
    ItemReattached,
    ItemResult,
    ItemState,
    ItemSubmitted,
    JobCancelledError,
    JobFailedError,
)
from fal_edit_async._cli import _parser, main
from fal_edit_async._cli._html import Row, render
from fal_edit_async._cli._messages import message
from fal_edit_async._cli._progress import Progress
from fal_edit_async._cli._schema import manifest_schema, problems
from fal_edit_async.emulator import Faults

from .test_cli_support import clear_fal_env, emulator_thread, json_lines, plain, write_images

PROMPT = "Make this pixel-art style."
REPO = Path(__file__).resolve().parent.parent
EST = Decimal("0.27")


def _result(key: str, state: ItemState, **values: object) -> ItemResult:
    return ItemResult(key=key, index=0, state=state, **values)  # type: ignore[arg-type]


# -- 1. cancelled and unsent items are not "failed" --------------------------------------


def test_cancelled_and_unsent_items_are_counted_apart_from_failed() -> None:
    """A cancel fal confirmed and an item the budget kept back are their own outcomes."""
    progress = Progress(3, clock=lambda: 0.0)
    over = BudgetExceededError(estimate=0.3, spent=1.0, budget=1.0)
    progress.on_result(_result("a", ItemState.CANCELLED, error=JobCancelledError("r")))
    progress.on_result(_result("b", ItemState.NOT_SUBMITTED, error=over))
    progress.on_result(
        _result("c", ItemState.FAILED, error=JobFailedError(request_id="r", error="x"))
    )

    assert (1, 1, 1) == (
        progress.counts["cancelled"],
        progress.counts["not submitted"],
        progress.failed,
    )
    assert progress.counts_text().startswith(
        "0 done, 1 failed (1 job failed), 1 cancelled, 1 not submitted (1 over budget)"
    )


# -- 2. cost: this run, earlier runs, in flight; nothing paid on the emulator ------------


def test_cost_is_split_into_this_run_earlier_runs_and_in_flight() -> None:
    """A job this run submitted is spent by this run; a journal's is an earlier run's; jobs on
    fal now are in flight, not spent; a cancelled job is not spent."""
    progress = Progress(4, {k: EST for k in "abcd"}, clock=lambda: 0.0)
    progress.on_event(ItemSubmitted(key="a", request_id="ra"))
    progress.on_result(_result("a", ItemState.COMPLETED, cost=EST))
    progress.on_result(_result("b", ItemState.COMPLETED, cost=EST, resumed=True))
    progress.on_event(ItemSubmitted(key="c", request_id="rc"))
    progress.on_event(ItemSubmitted(key="d", request_id="rd"))
    progress.on_result(_result("d", ItemState.CANCELLED, cost=EST, error=JobCancelledError("rd")))

    text = progress.cost_text()

    assert "~$0.27 spent by this run, ~$0.27 by earlier runs, ~$0.27 in flight" in text
    assert "this run would cost ~$0.27" in progress.cost_text(emulator=True)
    assert "spent" not in progress.cost_text(emulator=True)


def test_a_job_that_completed_is_spent_when_its_download_failed() -> None:
    """atk19 F2: fal bills a job once it completes; a download that fails after (a full
    disk) does not make it free: spent by this run, not "by earlier runs" on the rerun."""
    progress = Progress(2, {k: EST for k in "ab"}, clock=lambda: 0.0)
    for key in "ab":
        progress.on_event(ItemSubmitted(key=key, request_id=f"r{key}"))
    progress.on_event(ItemCompleted(key="a", request_id="ra"))
    full = DownloadError("No space left on device")
    progress.on_result(_result("a", ItemState.FAILED, cost=EST, error=full))
    failed = JobFailedError(request_id="rb", error="model error")
    progress.on_result(_result("b", ItemState.FAILED, cost=EST, error=failed))

    assert "~$0.27 spent by this run (estimated)" in progress.cost_text()


def test_a_journaled_rerun_says_it_spent_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run again with the same journal: nothing is spent by this run, the rest by earlier runs."""
    write_images(tmp_path / "in", "a.png", "b.png")
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    argv += ["--journal", str(tmp_path / "run.db")]
    with emulator_thread(monkeypatch):
        assert 0 == main(argv)
        first = capsys.readouterr().err
        assert 0 == main(argv)
    again = capsys.readouterr().err
    assert "~$0.54 spent by this run (estimated)" in first
    assert (
        "2 done (2 from the journal) of 2 · ~$0.00 spent by this run, ~$0.54 by earlier runs"
        in again
    )


def test_a_journal_that_failed_a_write_is_never_a_quiet_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """atk19 F1: the journal's disk fills once the jobs are on fal: every item is delivered,
    but the run says the journal failed, how to find the jobs again, and exits 1 (it said
    "2 done of 2", exit 0, and the rerun called them lost submits)."""
    write_images(tmp_path / "in", "a.png")
    journal = tmp_path / "run.db"
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    argv += ["--journal", str(journal)]
    with emulator_thread(monkeypatch):
        assert 0 == main(argv)
        capsys.readouterr()
        with sqlite3.connect(journal) as db:  # every write that names a job fails
            db.execute(
                "CREATE TRIGGER full BEFORE UPDATE ON items WHEN NEW.request_id IS NOT NULL "
                "AND OLD.request_id IS NULL "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        write_images(tmp_path / "in", "b.png")
        assert 1 == main(argv)
    err = plain(capsys.readouterr().err)
    assert "2 done (1 from the journal) of 2" in err
    assert "Journal: a write failed (" in err and "database or disk is full" in err
    assert "`fal-edit reconcile JOURNAL` finds lost submits" in err


# -- 3. re-attached jobs are in flight ---------------------------------------------------


def test_reattached_jobs_are_shown_in_flight() -> None:
    """A job re-attached from the journal is in flight (the run is not hung), and its cost is
    an earlier run's when it completes."""
    progress = Progress(1, {"a": EST}, clock=lambda: 0.0)
    progress.on_event(ItemReattached(key="a", request_id="ra"))

    assert "re-attached" == progress.active["a"].state
    assert "1 in flight" in progress.counts_text()
    progress.on_result(_result("a", ItemState.COMPLETED, cost=EST, resumed=True))
    assert (Decimal(0), EST) == (progress.spent, progress.spent_before)


def test_a_rerun_re_attaches_to_a_job_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job left running on fal (its cancel ignored) is re-attached by the rerun, which says
    so, shows it in flight, and pays nothing for it."""
    write_images(tmp_path / "in", "a.png")
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    argv += ["--journal", str(tmp_path / "run.db")]
    with emulator_thread(monkeypatch, cancel_running="ignore") as (portal, emu):
        portal.call(emu.hold_jobs)
        assert 1 == main([*argv, "--timeout", "0.5"])
        capsys.readouterr()
        portal.call(emu.release_jobs)
        assert 0 == main(argv)
        assert 1 == emu.counters.submits
    err = capsys.readouterr().err
    assert "[a] re-attached to the job of an earlier run: " in err
    assert "1 done (1 from the journal) of 1 · ~$0.00 spent by this run" in err


# -- 4. the --journal hint on interrupt: tests/test_console_pty.py (Ctrl-C) ---------------


def test_an_unjournaled_timeout_does_not_offer_the_journal_hint_when_all_is_done() -> None:
    """The hint is for runs cut short; a run that finished everything has nothing to resume."""
    progress = Progress(1, clock=lambda: 0.0)
    progress.on_result(_result("a", ItemState.COMPLETED))
    assert "--journal" not in progress.summary()


# -- 5. quiet and verbose, failures at the end, retries and rate limiting ----------------


def test_quiet_prints_no_log_lines_and_verbose_prints_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--quiet keeps model log lines out; --verbose prints them even for a large run."""
    write_images(tmp_path / "in", *(f"p{n}.png" for n in range(10)))
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    with emulator_thread(monkeypatch):
        assert 0 == main([*argv, "--quiet"])
        quiet = capsys.readouterr().err
        assert 0 == main([*argv, "--overwrite"])
        default = capsys.readouterr().err
        assert 0 == main([*argv, "--overwrite", "--verbose"])
        verbose = capsys.readouterr().err
    assert "Preparing inputs" not in quiet and "10 done of 10" in quiet
    assert "Preparing inputs" not in default  # 10 items: 30 log lines would bury the results
    assert 10 == verbose.count("[1/3] Preparing inputs")


def test_rate_limiting_is_shown() -> None:
    """A lower jobs limit after a 429 is a notice, and the summary keeps the lowest."""
    progress = Progress(1)
    assert progress.on_limit(16) is None
    assert "rate limited: in flight lowered to 6" == progress.on_limit(6)
    assert progress.on_limit(8) is None
    assert 6 == progress.lowest


def test_retries_of_rate_limited_requests_are_summed_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Requests retried after a 429 are counted in the closing lines."""
    write_images(tmp_path / "in", "a.png", "b.png", "c.png")
    faults = Faults(rate_limit=0.5, retry_after=0.0, seed=3, routes={"submit"})
    with emulator_thread(monkeypatch, faults=faults):
        argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
        assert 0 == main(argv)
    err = capsys.readouterr().err
    assert re.search(r"Retries: .*\d+ requests? retried \(\d+ rate limit\)", err), err


# -- 6. replayed errors keep their type and say their text once ---------------------------


def test_a_replayed_failure_is_reported_as_the_first_run_reported_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure read back from the journal has the first run's error type and text, is
    ``skipped`` (not failed again), and is not counted "from the journal" as done."""
    write_images(tmp_path / "in", "a.png", "b.png")
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--json"]
    argv += ["--journal", str(tmp_path / "run.db")]
    with emulator_thread(monkeypatch) as (portal, emu):
        portal.call(emu.hold_jobs)

        def refuse_first() -> None:
            portal.call(emu.wait_submitted, 2)
            emu.fail_job(sorted(emu.jobs)[0], "validation")
            portal.call(emu.release_jobs)

        import threading

        helper = threading.Thread(target=refuse_first)
        helper.start()
        assert 1 == main(argv)
        helper.join()
        first = {r["input"]: r for r in json_lines(capsys.readouterr().out)}
        assert 1 == main(argv)
    captured = capsys.readouterr()
    again = {r["input"]: r for r in json_lines(captured.out)}
    [failed] = [k for k, r in first.items() if r["status"] == "failed"]
    assert first[failed]["error"] == again[failed]["error"]
    assert first[failed]["error_type"] == again[failed]["error_type"] == "content_policy_violation"
    assert 1 == again[failed]["error"].count("content policy")
    assert "skipped" == again[failed]["outcome"]
    assert "1 done (1 from the journal), 1 skipped of 2" in captured.err
    assert "add --retry-failed" in captured.err


# -- 7. the conventions of gh, pip and httpie ---------------------------------------------


def test_version_help_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints it; `help` and `help batch` print help; every command has examples."""
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert 0 == caught.value.code and capsys.readouterr().out.startswith("fal-edit ")
    assert 0 == main(["help"]) and "COMMAND" in capsys.readouterr().out
    assert 0 == main(["help", "journal", "show"]) and "JOURNAL" in capsys.readouterr().out
    parser = _parser()
    for name, command in parser.commands().items():
        for inner in [command, *command.commands().values()]:
            text = inner.format_help()
            assert "examples:" in text, f"{name}: no examples"


def test_a_mistyped_flag_is_reported_under_its_command_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`edit --qualty low` names --quality, under the usage of edit; `--qual` is no
    abbreviation; a mistyped command gets a suggestion too."""
    with pytest.raises(SystemExit) as caught:
        main(["edit", PROMPT, "a.png", "--qualty", "low"])
    err = capsys.readouterr().err
    assert 2 == caught.value.code
    assert err.startswith("usage: fal-edit edit ") and "did you mean --quality?" in err
    with pytest.raises(SystemExit):
        main(["edit", PROMPT, "a.png", "--qual", "low"])
    assert "unrecognized arguments: --qual" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bach", "jobs.jsonl"])
    assert "did you mean 'batch'?" in capsys.readouterr().err


def test_a_forgotten_prompt_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fal-edit edit photo.png` says the prompt is missing (not an INPUT)."""
    write_images(tmp_path, "photo.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["edit", "photo.png"])
    err = capsys.readouterr().err
    assert 2 == caught.value.code and "missing PROMPT: 'photo.png' is an input" in err
    with pytest.raises(SystemExit):
        main(["edit", "make it pop"])
    assert "missing INPUT" in capsys.readouterr().err


def test_job_commands_do_not_offer_emulator(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a key, `fal-edit status` says how to set one, not to add --emulator it lacks."""
    clear_fal_env(monkeypatch)
    assert 2 == main(["status", "some-id"])
    err = capsys.readouterr().err
    assert "FAL_KEY" in err and "--emulator" not in err


def test_completion_scripts_name_the_commands_and_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`completion bash` prints a script bash accepts, with the commands and edit's flags."""
    assert 0 == main(["completion", "bash"])
    script = capsys.readouterr().out
    assert "complete -o filenames -F _fal_edit fal-edit" in script
    assert "--quality" in script and "journal show" in script
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert 0 == checked.returncode, checked.stderr
    assert 0 == main(["completion", "zsh"])
    assert capsys.readouterr().out.startswith("#compdef fal-edit")


# -- 8. progress on stderr when stdout is redirected; a closed stdout ---------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_goes_to_stderr_when_stdout_is_redirected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`> results.jsonl` with stderr on a terminal: JSON on stdout, the live panel on stderr."""
    write_images(tmp_path / "in", "a.png")
    stderr = _Tty()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("COLUMNS", "100")
    with emulator_thread(monkeypatch):
        assert 0 == main(["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    [record] = json_lines(capsys.readouterr().out)
    shown = plain(stderr.getvalue())
    assert "completed" == record["status"]
    assert "1/1" in shown and "1 done · 0 failed · 0 in flight" in shown  # the panel


def test_a_closed_stdout_stops_the_run_like_ctrl_c(tmp_path: Path) -> None:
    """`--json | head -1`: the run stops, cancels what is on fal, says why, exits 141, and
    prints no traceback."""
    write_images(tmp_path / "in", *(f"p{n}.png" for n in range(12)))
    command = f"{sys.executable} -m fal_edit_async edit x in --emulator --json --out out | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 141 == done.returncode, done.stderr
    assert 1 == len(done.stdout.splitlines())
    assert "stdout was closed" in done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


# -- 9. skipped files, --recursive, a dry run that checks contents ------------------------


def test_skipped_files_and_subfolders_are_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files that are not images and subfolders are named; --recursive takes subfolders."""
    write_images(tmp_path / "in", "a.png")
    write_images(tmp_path / "in" / "more", "b.png")
    (tmp_path / "in" / "notes.txt").write_text("hello")
    assert 0 == main(["edit", PROMPT, str(tmp_path / "in"), "--dry-run"])
    err = capsys.readouterr().err
    assert "Skipped 1 file that is not an image" in err and "notes.txt" in err
    assert "1 subfolder" in err and "--recursive" in err and "Dry run: 1 item," in err
    assert 0 == main(["edit", PROMPT, str(tmp_path / "in"), "--dry-run", "--recursive"])
    assert "Dry run: 2 items," in capsys.readouterr().err


def test_a_dry_run_checks_contents_and_prints_one_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Empty and fake images fail the dry run; same-priced items share a line; --json ends
    with one total object."""
    write_images(tmp_path / "in", *(f"p{n}.png" for n in range(5)))
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "in" / "fake.png").write_bytes(b"<html>not an image</html>")
    assert 1 == main(["edit", PROMPT, str(tmp_path / "in"), "--dry-run", "--quality", "low"])
    out = capsys.readouterr().out
    assert "empty.jpg is not an image (it is empty)" in out
    assert "fake.png is not an image (its contents are not PNG" in out
    assert 1 == len([line for line in out.splitlines() if "each:" in line])
    assert "5 items at ~$" in out
    assert 1 == main(["edit", PROMPT, str(tmp_path / "in"), "--dry-run", "--json"])
    *items, total = json_lines(capsys.readouterr().out)
    assert 7 == len(items)
    assert ("total", 5, 2) == (total["status"], total["items"], total["invalid"])


# -- 10. --endpoint is checked up front -----------------------------------------------------


def test_a_bad_endpoint_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--endpoint nonsense exits 2 before anything is priced or sent; another model's dry run
    says whose prices it used."""
    with pytest.raises(SystemExit) as caught:
        main(["edit", PROMPT, "https://example.com/a.png", "--endpoint", "nonsense", "--dry-run"])
    assert 2 == caught.value.code
    assert "not an endpoint id: 'nonsense'" in capsys.readouterr().err
    argv = ["edit", PROMPT, "https://example.com/a.png", "--endpoint", "fal-ai/flux/dev"]
    assert 0 == main([*argv, "--dry-run"])
    assert "priced as fal-ai/gpt-image-1/edit-image" in capsys.readouterr().err


# -- 11. plain messages -----------------------------------------------------------------------


def test_messages_show_plain_paths_sizes_and_known_options() -> None:
    """No PosixPath(...), sizes in MB, a did-you-mean for an unknown option, and fal's
    "Invalid status code" turned into words."""
    assert "mixed/empty.jpg" in message(InputError("image", Path("mixed/empty.jpg"), "a file"))
    assert "PosixPath" not in message(InputError("image", Path("mixed/empty.jpg"), "a file"))
    assert "at most 50 MB" in message(InputError("image", "x", "a file of at most 52428800 bytes"))
    unknown = InputError("qualty", "low", "no such field; known: prompt, quality")
    assert "unknown option 'qualty'; did you mean 'quality'?" in message(unknown)
    refused = JobFailedError(request_id="r1", error="Invalid status code: 422", detail=None)
    assert "fal refused the job (HTTP 422)" == message(refused)


def test_os_errors_name_the_file_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest that is a folder: a plain line naming it, exit 2."""
    (tmp_path / "jobs.jsonl").mkdir()
    assert 2 == main(["batch", str(tmp_path / "jobs.jsonl"), "--dry-run"])
    err = capsys.readouterr().err
    assert "PosixPath" not in err and "jobs.jsonl" in err and 1 == len(err.splitlines())


# -- 12. manifests -------------------------------------------------------------------------


def test_manifest_problems_are_told_by_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Line numbers as an editor counts them (a U+2028 inside a string is no line break), a
    reused key names its first line, a local file under image_urls and a folder under inputs
    are refused with advice, and schema problems name the field."""
    write_images(tmp_path / "in", "a.png", "b.png")
    lines = [
        {"prompt": "first\u2028line", "inputs": ["in/a.png"], "key": "k"},
        {"prompt": "p", "inputs": ["in/b.png"], "key": "k"},
        {"prompt": "p", "image_urls": ["in/a.png"]},
        {"prompt": "p", "inputs": ["in"]},
        {"prompt": "p", "inputs": ["in/a.png"], "quality": "best", "qualty": "low"},
        {"prompt": "p", "inputs": ["in/a.png"], "image_urls": ["https://x/a.png"]},
    ]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines))
    assert 1 == main(["batch", str(manifest), "--dry-run", "--json"])
    *records, _ = json_lines(capsys.readouterr().out)
    errors = {r["line"]: r["error"] for r in records if r["status"] == "failed"}
    assert "key 'k' is already used by line 1" in errors[2]
    assert "put local files under inputs" in errors[3]
    assert "is a folder, which would make one job of all its images" in errors[4]
    assert 'quality: "best" is not one of auto, low, medium, high' in errors[5]
    assert "unknown field 'qualty' (did you mean 'quality'?)" in errors[5]
    assert "give either inputs or image_urls (not both)" in errors[6]


def test_the_schema_in_docs_is_the_one_used() -> None:
    """docs/manifest.schema.json is the schema the command line validates with."""
    docs = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    assert docs == manifest_schema()


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    )
)
def test_the_validator_never_raises(value: object) -> None:
    """Any JSON value gets a list of problems (or none), never an exception."""
    assert isinstance(problems(value), list)


def test_a_valid_line_has_no_problems() -> None:
    """The lines the help shows validate."""
    line = {"prompt": "pixel art", "inputs": ["cat.png"], "quality": "low", "num_images": 2}
    assert [] == problems(line)
    assert [] == problems({"prompt": "p", "image_urls": ["https://x/a.png"], "key": "sku-1"})


# -- 13. the emulator's banner, key and request log: tests/emulator/test_emulator_cli.py ---


# -- 14. small glitches ----------------------------------------------------------------------


def test_an_item_is_counted_once_and_leaves_the_panel_with_its_result() -> None:
    """A second result for a key is ignored; the finished item is no longer in flight."""
    progress = Progress(2, clock=lambda: 0.0)
    progress.on_event(ItemSubmitted(key="a", request_id="ra"))
    assert progress.on_result(_result("a", ItemState.COMPLETED)) is not None
    assert progress.on_result(_result("a", ItemState.INTERRUPTED)) is None
    assert ({}, 1) == (progress.active, progress.finished)


def test_a_stopping_run_shows_no_eta_and_no_stale_queue_positions() -> None:
    """After Ctrl-C (or a refused key) the ETA goes, and queued jobs say cancelling."""
    from rich.console import Console

    from fal_edit_async._cli._display import LiveDisplay

    now = [0.0]
    progress = Progress(3, clock=lambda: now[0])
    progress.on_event(ItemSubmitted(key="a", request_id="ra"))
    progress.on_event(ItemQueued(key="a", request_id="ra", position=3))
    progress.on_result(_result("b", ItemState.COMPLETED))
    now[0] = 10.0
    assert progress.eta() is not None
    progress.stopping = "stopping"
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    console.print(LiveDisplay(progress, console).render())
    shown = plain(console.file.getvalue())  # type: ignore[attr-defined]
    assert progress.eta() is None and "ETA" not in shown
    assert "cancelling" in shown and "queued #4" not in shown


def test_a_bad_emulator_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`fal-edit emulator --port 80000` exits 2 with a sentence, not an internal error."""
    with pytest.raises(SystemExit) as caught:
        main(["emulator", "--port", "80000"])
    assert 2 == caught.value.code
    assert "a port is a number from 0 to 65535" in capsys.readouterr().err


# -- 15. the report ---------------------------------------------------------------------------


def test_the_report_escapes_names_and_links_images_relatively(tmp_path: Path) -> None:
    """Odd names are escaped and quoted; image links are relative to the page; no script or
    style is fetched from anywhere."""
    page = tmp_path / "site" / "report.html"
    row = Row(
        key="<script>alert(1)</script>",
        outcome="done",
        prompt="a & b",
        inputs=[str(tmp_path / "in" / "my photo#1.png")],
        outputs=[str(tmp_path / "site" / "out" / "x_0.png")],
    )
    text = render([row], page, title="t", totals=["1 done of 1"])
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    assert 'src="../in/my%20photo%231.png"' in text and 'src="out/x_0.png"' in text
    assert not re.search(r"<(script|link)[^>]+(src|href)=", text)
    assert "http" not in text.replace("https://json-schema", "")


def test_report_command_writes_the_page_of_a_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fal-edit report JOURNAL` writes one page with each journaled item and its outputs."""
    write_images(tmp_path / "in", "a.png", "b.png")
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    with emulator_thread(monkeypatch):
        assert 0 == main([*argv, "--journal", str(tmp_path / "run.db")])
    capsys.readouterr()
    assert 0 == main(["report", str(tmp_path / "run.db")])
    page = (tmp_path / "report.html").read_text()
    assert "wrote " in capsys.readouterr().err
    assert 2 == page.count('class="item"') and 'src="out/a_0.png"' in page


def test_report_flag_writes_the_page_even_when_a_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--report is written for a run with failures too, each failure with its next step."""
    write_images(tmp_path / "in", "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"")
    page = tmp_path / "out" / "report.html"
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    with emulator_thread(monkeypatch):
        assert 1 == main([*argv, "--report", str(page)])
    assert f"Report: {page}" in capsys.readouterr().err
    text = page.read_text()
    assert 'data-state="done"' in text and 'data-state="failed"' in text
    assert "Next: fix the input" in text


def test_the_namespace_shape_is_unchanged_by_the_parser() -> None:
    """The parser still gives handlers a plain Namespace (the handlers read attributes)."""
    args, extras = _parser().parse_known_args(["edit", PROMPT, "a.png"])
    assert isinstance(args, argparse.Namespace) and [] == extras
    assert (["a.png"], False) == (args.inputs, args.recursive)


def test_control_characters_in_names_never_reach_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file called "\\x1b[2J.png" is shown escaped: its name cannot clear the screen."""
    [photo] = write_images(tmp_path / "in", "\x1b[2Jevil.png")
    terminal = _Tty()
    with emulator_thread(monkeypatch):
        monkeypatch.setitem(sys.modules, "rich.console", None)  # plain lines
        monkeypatch.setattr(sys, "stdout", terminal)
        assert 0 == main(["edit", PROMPT, str(photo), "--out", str(tmp_path / "o")])
    shown = terminal.getvalue()
    assert "\x1b" not in shown and "\\x1b[2Jevil" in shown


def test_an_empty_manifest_and_a_missing_journal_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty manifest runs nothing (exit 2, said plainly); so does a report of no journal."""
    (tmp_path / "jobs.jsonl").write_text("\n\n")
    assert 2 == main(["batch", str(tmp_path / "jobs.jsonl"), "--dry-run"])
    assert "has no lines" in capsys.readouterr().err
    assert 2 == main(["report", str(tmp_path / "none.db")])
    assert "no such journal: " in capsys.readouterr().err


def test_the_end_lists_at_most_twenty_failures_and_counts_the_rest() -> None:
    """A run with 25 failures lists 20 with their next step, then says how many more."""
    from fal_edit_async._cli._report import JsonReporter
    from fal_edit_async._cli._run import RunOptions, _Run, closing_lines

    progress = Progress(25, clock=lambda: 0.0)
    reporter = JsonReporter(progress, io.StringIO(), io.StringIO())
    run = _Run(reporter, RunOptions(out=None, endpoint="fal-ai/x"), {})
    for n in range(25):
        error = JobFailedError(request_id=f"r{n}", error="boom", error_type="runner_disconnected")
        progress.on_result(_result(f"item-{n}", ItemState.FAILED, error=error))

    lines = closing_lines(run)

    assert 20 == sum(1 for line in lines if line.startswith("  ✗ item-"))
    assert "  … and 5 more (--json or --report lists every item)" in lines
    assert all("run it again (with --journal" in line for line in lines if "✗" in line)


def test_an_unknown_submit_says_why_it_was_not_retried() -> None:
    """A submit whose answer was lost (a 500 that may have queued a job) says why no second
    submit was sent, and how to look it up."""
    from fal_edit_async import ServerError
    from fal_edit_async._cli._messages import next_step

    error = ServerError("Internal Server Error", status=500, request_id="r9")
    result = _result("a", ItemState.UNKNOWN, error=error, request_id="r9")

    step = next_step(result, "unknown", journal=True, line=None)

    assert "not retried" in step and "pay twice" in step and "fal-edit status r9" in step
