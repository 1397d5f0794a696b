"""Attacks (round atk3) on the resume-ownership, temp-file liveness and lazy-CLI changes.

Seven of these were breaks the attacker found (now fixed: nothing at a journaled name is
replaced on a guess that it is broken, a file there before an attempt is never deleted by
it, a pid too large for the kernel is nobody's); the rest are claims that held under an
attack not covered elsewhere."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from PIL import Image

from fal_edit_async import EditImageInput, EditItem, ItemResult, RetryPolicy
from fal_edit_async._files import remove_stale_parts
from fal_edit_async.emulator import Emulator

from .conftest import client_for, make_png

ONCE = RetryPolicy(wait=False, max_attempts=1)


def item(path: Path, n: int = 1) -> EditItem:
    return EditItem(input=EditImageInput(prompt="p", image_urls=[path], num_images=n), name="photo")


def input_png(tmp_path: Path, folder: str = "a", color: tuple[int, int, int] = (1, 2, 3)) -> Path:
    path = tmp_path / folder / "photo.png"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(make_png(color=color))
    return path


async def run(
    emulator: Emulator, it: EditItem, out: Path, journal: Path | None, **kw: object
) -> ItemResult:
    retry = kw.pop("retry", None)
    extra = {"retry": retry} if retry is not None else {}
    async with (
        client_for(emulator, **extra) as client,
        client.edit_many([it], download_to=out, journal=journal, **kw) as batch,  # type: ignore[arg-type]
    ):
        (result,) = [r async for r in batch]
    return result


async def partial_run(emulator: Emulator, src: Path, out: Path, journal: Path) -> Path:
    """Run 1: a two-image item of which one download fails; the other is journaled."""
    emulator.schedule_fault("download", "server_error", times=1, status=500)
    failed = await run(emulator, item(src, 2), out, journal, retry=ONCE)
    assert not failed.ok
    (arrived,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return arrived


# -- 1. output ownership on resume ---------------------------------------------------------


async def test_a_resume_never_deletes_another_runs_file_with_identical_bytes(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Run 1 (J1) gets one of two images, journaled (record_files). The user clears the
    folder; run 2 (other journal, same input and prompt, so identical bytes) writes
    photo_0 and photo_1. Run 1 resumed: the journaled name holds identical bytes, so it is
    "ours" and kept; the sibling name clashes; the clash path deletes what the attempt
    "wrote", which is run 2's file, then writes photo-2_*."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    arrived = await partial_run(emulator, src, out, tmp_path / "j1")
    arrived.unlink()  # the user tidies up
    other = await run(emulator, item(src, 2), out, tmp_path / "j2")
    assert other.ok
    theirs = {f.path: f.path.read_bytes() for f in other.files}
    resumed = await run(emulator, item(src, 2), out, tmp_path / "j1")
    assert resumed.ok
    for path, data in theirs.items():
        assert path.exists(), f"run 2's {path.name} was deleted by the resumed run"
        assert path.read_bytes() == data


async def test_a_whole_image_in_another_format_at_a_journaled_name_stays(
    emulator: Emulator, tmp_path: Path
) -> None:
    """guarantees.md: "a whole image there that is not the item's (an edit, a file written
    after the output was deleted) stays, and the item gets -2". A GIF saved under the name
    (an editor that keeps the file name) is whole, but _whole_image knows three formats."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    arrived = await partial_run(emulator, src, out, tmp_path / "j1")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "GIF")
    arrived.write_bytes(buffer.getvalue())  # the user's own image, written over the output
    resumed = await run(emulator, item(src, 2), out, tmp_path / "j1")
    assert resumed.ok
    assert arrived.read_bytes() == buffer.getvalue(), "the user's GIF was replaced"


async def test_an_edited_png_with_trailing_data_at_a_journaled_name_stays(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Tools append data after IEND (metadata trailers, "polyglot" files); the image is
    whole to any decoder, yet the repair path replaces it."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    arrived = await partial_run(emulator, src, out, tmp_path / "j1")
    edit = make_png(color=(250, 0, 0)) + b"trailer: edited by the user"
    Image.open(io.BytesIO(edit)).load()  # a decoder reads it
    arrived.write_bytes(edit)
    resumed = await run(emulator, item(src, 2), out, tmp_path / "j1")
    assert resumed.ok
    assert arrived.read_bytes() == edit, "the user's edit was replaced"


async def test_a_users_symlink_at_a_journaled_name_is_never_written_through(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A symlink at the journaled name, pointing at a user's non-image file: whatever
    happens to the link, the target's bytes are untouched."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    arrived = await partial_run(emulator, src, out, tmp_path / "j1")
    target = tmp_path / "notes.txt"
    target.write_bytes(b"my notes")
    arrived.unlink()
    arrived.symlink_to(target)
    resumed = await run(emulator, item(src, 2), out, tmp_path / "j1")
    assert resumed.ok
    assert target.read_bytes() == b"my notes"


async def test_a_hard_link_at_a_journaled_name_is_never_written_through(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A hard link to a user's (broken-looking) file at the journaled name: the repair
    renames over the name, so the user's inode keeps its bytes."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    arrived = await partial_run(emulator, src, out, tmp_path / "j1")
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"not an image")
    arrived.unlink()
    os.link(mine, arrived)
    resumed = await run(emulator, item(src, 2), out, tmp_path / "j1")
    assert resumed.ok
    assert mine.read_bytes() == b"not an image"


async def test_a_fifo_at_a_journaled_name_does_not_hang_the_resume(
    emulator: Emulator, tmp_path: Path
) -> None:
    """lstat guards _same_as, not _whole_image. The watchdog (an OS thread: the event loop
    itself is blocked) bounds the wait: after 20 s it opens the FIFO for writing, which
    succeeds only if a reader is blocked in it, and the run goes on."""

    src = input_png(tmp_path)
    out = tmp_path / "out"
    arrived = await partial_run(emulator, src, out, tmp_path / "j1")
    arrived.unlink()
    os.mkfifo(arrived)
    blocked = threading.Event()
    finished = threading.Event()

    def watchdog() -> None:
        if finished.wait(20):
            return
        try:
            fd = os.open(arrived, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        blocked.set()
        os.close(fd)  # the reader sees EOF and goes on

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        resumed = await run(emulator, item(src, 2), out, tmp_path / "j1")
    finally:
        finished.set()
        thread.join()
    assert not blocked.is_set(), "the resumed run blocked reading a FIFO at its journaled name"
    assert resumed.ok


async def test_a_directory_at_a_journaled_name_gets_new_names(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A folder at the journaled name is nobody's image: the item claims new names (as
    for any other clash) rather than failing on every rerun."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    arrived = await partial_run(emulator, src, out, tmp_path / "j1")
    arrived.unlink()
    arrived.mkdir()
    (arrived / "keep.txt").write_text("mine")
    resumed = await run(emulator, item(src, 2), out, tmp_path / "j1")
    assert resumed.ok, resumed.error
    assert (arrived / "keep.txt").read_text() == "mine"


async def test_a_kill_between_publish_and_journal_leaves_neither_a_duplicate_nor_a_replacement(
    emulator: Emulator, tmp_path: Path
) -> None:
    """SIGKILL after the file is published, before the journal's ``downloaded`` record. The
    name was journaled as the item's claim, and the file holds exactly the job's bytes: the
    rerun takes it for its own, untouched, and writes no duplicate under ``-2``."""

    src = input_png(tmp_path)
    out = tmp_path / "out"
    code = (
        "import os, signal, sys\n"
        "from fal_edit_async._batch._ledger._states import Recorder\n"
        "async def die(self, key, files):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "Recorder.record_downloaded = die\n"
        "from fal_edit_async._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env |= {"FAL_KEY": emulator.api_key, "FAL_QUEUE_URL": emulator.queue_url}
    env |= {"FAL_REST_URL": emulator.rest_url}
    argv = ["edit", "p", str(src), "--out", str(out), "--journal", str(tmp_path / "j1")]

    done = await anyio.run_process([sys.executable, "-c", code, *argv], env=env, check=False)
    assert -signal.SIGKILL == done.returncode, done.stderr.decode()
    (first,) = list(out.glob("*.png"))
    before = first.read_bytes()
    resumed = await run(
        emulator,
        EditItem(input=EditImageInput(prompt="p", image_urls=[src]), name="photo"),
        out,
        tmp_path / "j1",
    )
    assert resumed.ok, resumed.error
    assert resumed.resumed and 1 == emulator.counters.submits  # the same job, not a new one
    assert first.read_bytes() == before
    assert [f.path for f in resumed.files] == [first]
    assert [first] == list(out.glob("*.png"))


# -- 2. temp-file liveness by flock ---------------------------------------------------------


def _unshare() -> list[str] | None:
    for cmd in (["unshare", "-p", "-f"], ["unshare", "-U", "-r", "-p", "-f"]):
        try:
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0:
                return cmd
        except (OSError, subprocess.SubprocessError):
            pass
    return None


_CLEAN = (
    "import sys; from pathlib import Path; "
    "from fal_edit_async._files import remove_stale_parts; "
    "print(remove_stale_parts(Path(sys.argv[1])))"
)
#: 64 KiB: past the file's write buffer, so the bytes are on disk when it is killed.
_WRITER = (
    "import sys; from pathlib import Path; from fal_edit_async._files import TempFile; "
    "t = TempFile(Path(sys.argv[1]), 'photo_0', fsync=False, checksum=False); "
    "t.write([b'x' * 65536]); print(t.path, flush=True); sys.stdin.read()"
)


def test_a_stopped_writer_keeps_its_temp_file_and_a_killed_ones_goes(tmp_path: Path) -> None:
    """A writer SIGSTOPped mid-download (Ctrl-Z, a frozen container) still holds its lock:
    a batch starting in another pid namespace, where its pid means nothing, keeps the file.
    Once it is SIGKILLed the kernel drops the lock and the next batch removes the file."""

    unshare = _unshare()
    if unshare is None:
        pytest.skip("no pid namespace can be made here (unshare -p)")
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        part = Path(writer.stdout.readline().strip())
        writer.send_signal(signal.SIGSTOP)

        def clean() -> str:
            argv = [*unshare, sys.executable, "-c", _CLEAN, str(tmp_path)]
            return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

        assert "0\n" == clean()
        assert part.exists()
        writer.kill()
        writer.wait()
    assert "1\n" == clean()
    assert not part.exists()


def test_odd_files_named_like_temp_files_are_left_alone(tmp_path: Path) -> None:
    """Folders, symlinks (to a dead-looking temp file elsewhere) and FIFOs under temp-file
    names are nobody's download: kept, and opening a FIFO does not block the cleaner."""

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / f".t_0.fal-edit-{dead}-9.part"
    target.write_bytes(b"a dead run's")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".d_0.fal-edit-{dead}-1.part").mkdir()
    (out / f".s_0.fal-edit-{dead}-2.part").symlink_to(target)
    os.mkfifo(out / f".f_0.fal-edit-{dead}-3.part")
    (out / f".z_0.fal-edit-{dead}-4.part").write_bytes(b"stale")  # the one real stale file
    before = sorted(p.name for p in out.iterdir())
    assert 1 == remove_stale_parts(out)
    assert sorted(p.name for p in out.iterdir()) == [n for n in before if ".z_0." not in n]
    assert target.read_bytes() == b"a dead run's"


async def test_a_temp_file_name_with_a_huge_pid_does_not_stop_the_batch(
    emulator: Emulator, tmp_path: Path
) -> None:
    """``.x.fal-edit-99999999999999999999-1.part`` matches _STALE_PART; _alive() only catches
    OSError. The CLI says "internal error: OverflowError" (exit 1), nothing is edited."""
    src = input_png(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".x.fal-edit-99999999999999999999-1.part").write_bytes(b"junk")
    result = await run(
        emulator, EditItem(input=EditImageInput(prompt="p", image_urls=[src])), out, None
    )
    assert result.ok, result.error


# -- 3. the lazy CLI -------------------------------------------------------------------------


_NO_PILLOW = (
    "import sys; sys.modules['PIL'] = None  # as if Pillow were not installed\n"
    "from fal_edit_async._cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _no_pillow(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:

    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    return subprocess.run(
        [sys.executable, "-c", _NO_PILLOW, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def test_edit_with_the_emulator_without_pillow_says_how_to_get_it(tmp_path: Path) -> None:
    src = input_png(tmp_path)
    done = _no_pillow(["edit", "p", str(src), "--emulator", "--out", str(tmp_path / "o")], tmp_path)
    assert 2 == done.returncode, done.stderr
    assert "internal error" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fal-edit: error: ") and "needs Pillow" in last, last


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["emulator", "--help"], id="emulator-help"),
        pytest.param(["help", "emulator"], id="help-emulator"),
        pytest.param(["completion", "bash"], id="completion"),
        pytest.param(["edit", "p", "IN", "--emulator", "--dry-run"], id="dry-run"),
    ],
)
def test_without_pillow_help_completion_and_dry_runs_work(argv: list[str], tmp_path: Path) -> None:
    """None of these needs Pillow; the emulator's options are listed all the same."""
    src = input_png(tmp_path)
    done = _no_pillow([str(src) if a == "IN" else a for a in argv], tmp_path)
    assert 0 == done.returncode, done.stderr
    if argv[0] != "edit":
        assert "--result-ttl" in done.stdout


def test_the_emulator_without_pillow_refuses_in_one_line_whatever_its_options(
    tmp_path: Path,
) -> None:
    """Valid options or not, the Pillow message comes first; bad options are still usage
    errors of the emulator command (exit 2)."""
    done = _no_pillow(["emulator", "--port", "0"], tmp_path)
    assert 2 == done.returncode
    assert done.stderr == (
        "fal-edit: error: fal-edit emulator needs Pillow: pip install 'fal-edit-async[emulator]'\n"
    )
    bad = _no_pillow(["emulator", "--port", "x"], tmp_path)
    assert 2 == bad.returncode
    assert "fal-edit emulator: error: argument --port" in bad.stderr
