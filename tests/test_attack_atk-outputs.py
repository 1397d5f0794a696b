"""Attacks on "every output has one owner" and "outputs are whole or absent" (and the console
and report that show them). Each test is a bug an attacker found, written failing; a fix
removes its ``xfail(strict=True)`` marker; none is left."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fal_edit_async import (
    AsyncClient,
    DownloadError,
    EditImageInput,
    EditItem,
    InputError,
    ItemSubmitted,
    NameTemplate,
    RetryPolicy,
)
from fal_edit_async._cli._html import Row, render
from fal_edit_async._cli._inputs import UsageError, check_out_folder, expand, plan_edit
from fal_edit_async._cli._progress import Progress
from fal_edit_async.emulator import Emulator

from .conftest import client_for, make_png

PROMPT = "Make this pixel-art style."
CLI = [sys.executable, "-m", "fal_edit_async"]


def named(name: str, uri: str | Path, n: int = 1) -> EditItem:
    """An item called ``name``, as the CLI names items after their files."""
    return EditItem(
        input=EditImageInput(prompt=f"p {name}", image_urls=[uri], num_images=n), name=name
    )


# -- 1. a format spec on {n} is not checked like the literals ------------------------------


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{n:/>2}_{stem}.{ext}", id="slash-fill-makes-an-absolute-path"),
        pytest.param("{stem}{n:/>2}.{ext}", id="slash-fill-makes-a-subfolder"),
        pytest.param("{stem}{n:c}.{ext}", id="c-format-makes-control-characters"),
        pytest.param("{stem}{n:\n>2}.{ext}", id="newline-fill"),
        pytest.param("{n:.>3}.{ext}", id="dot-fill-makes-a-hidden-file"),
        pytest.param("{n: >3}.{ext}", id="space-fill-leads-with-spaces"),
    ],
)
def test_a_format_on_n_cannot_put_unsafe_characters_in_a_name(template: str) -> None:
    """The literals may not hold / \\ : control characters, nor lead with a dot or a space;
    the fill character and the ``c`` type of ``{n}``'s format put exactly those in."""
    with pytest.raises(InputError):
        NameTemplate.parse(template)


def test_a_slash_fill_renders_a_path_outside_the_folder(tmp_path: Path) -> None:
    """``{n:/>2}`` would render ``/0``, an absolute path once joined to the output folder:
    the template is refused before it can render anything."""
    with pytest.raises(InputError, match="zero-padding and width only"):
        NameTemplate.parse("{n:/>2}_{stem}.{ext}")


async def test_a_template_that_makes_a_subfolder_is_refused_before_anything_is_paid(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """``{stem}{n:/>2}`` passes the check, the job is submitted (paid), and the download
    fails (``out/photo/0.png``: no such folder): the result is lost on every rerun."""
    out = tmp_path / "out"
    try:
        async with client.edit_many(
            [named("photo", png_data_uri)], download_to=out, name_template="{stem}{n:/>2}.{ext}"
        ) as batch:
            results = [r async for r in batch]
    except InputError:
        results = []
    assert 0 == emulator.counters.submits, [r.error for r in results]


# -- 2. claims are checked against a snapshot of the folder, and a rename replaces ---------


async def test_two_batches_into_one_folder_never_share_a_file(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Two runs at once (two terminals, two workers on a shared folder): each lists the
    folder when it starts, both claim ``photo_0``, and the second rename replaces the first
    run's output. Both results report the same path; one of the two images is gone."""
    a = tmp_path / "a" / "photo.png"
    b = tmp_path / "b" / "photo.png"
    for path, color in ((a, (1, 2, 3)), (b, (4, 5, 6))):
        path.parent.mkdir()
        path.write_bytes(make_png(color=color))
    out = tmp_path / "out"
    async with (
        client_for(emulator) as client,
        client.edit_many([named("photo", a)], download_to=out) as first,
        client.edit_many([named("photo", b)], download_to=out) as second,
    ):
        # Both batches have listed the (empty) folder; now they run and download.
        results = [r async for r in first] + [r async for r in second]
    assert all(r.ok for r in results), [r.error for r in results]
    paths = [f.path for r in results for f in r.files]
    assert len(set(paths)) == 2, paths


async def test_a_resumed_item_never_replaces_a_file_another_run_wrote(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Run 1 (journal J1) claims ``photo`` and its download fails; run 2 (another journal,
    other inputs) writes ``photo_0.png``; run 1 resumed reuses its claim and replaces run
    2's output, although the guarantee says a file already there is never replaced."""
    a = tmp_path / "a" / "photo.png"
    b = tmp_path / "b" / "photo.png"
    for path, color in ((a, (1, 2, 3)), (b, (4, 5, 6))):
        path.parent.mkdir()
        path.write_bytes(make_png(color=color))
    out = tmp_path / "out"
    once = RetryPolicy(wait=False, max_attempts=1)
    emulator.schedule_fault("download", "server_error", times=1, status=500)
    async with (
        client_for(emulator, retry=once) as client,
        client.edit_many([named("photo", a)], download_to=out, journal=tmp_path / "j1") as run1,
    ):
        (failed,) = [r async for r in run1]
    assert not failed.ok  # paid, not downloaded: the row keeps its job and its name

    async with (
        client_for(emulator) as client,
        client.edit_many([named("photo", b)], download_to=out, journal=tmp_path / "j2") as run2,
    ):
        (other,) = [r async for r in run2]
    assert other.ok
    theirs = other.files[0].path.read_bytes()

    async with (
        client_for(emulator) as client,
        client.edit_many([named("photo", a)], download_to=out, journal=tmp_path / "j1") as run3,
    ):
        (resumed,) = [r async for r in run3]
    assert resumed.ok
    assert theirs == other.files[0].path.read_bytes(), "run 2's output was replaced"
    assert other.files[0].path != resumed.files[0].path


# -- 3. temp files of a live run in another pid namespace (container, host) ----------------


def _runs(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


async def test_a_live_download_survives_a_batch_starting_in_another_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two containers (or hosts, many-machines.md: "one shared folder") write into one
    folder. A batch starting in the second judges the first's ``.part`` by a pid that does
    not exist there, deletes it, and the first run's rename then fails: its paid result is
    not written."""
    unshare = next(
        (
            cmd
            for cmd in (["unshare", "-p", "-f"], ["unshare", "-U", "-r", "-p", "-f"])
            if _runs([*cmd, "true"])
        ),
        None,
    )
    if unshare is None:
        pytest.skip("no pid namespace can be made here (unshare -p)")
    from aiohttp import web

    from fal_edit_async import AiohttpTransport, ClientConfig, Credentials, ImageFile
    from fal_edit_async._core import Core
    from fal_edit_async._downloads import download_image

    from .test_downloads import padded_png

    data = padded_png(make_png(), 3 * 1024 * 1024)  # more than one write batch (1 MiB)
    more = __import__("anyio").Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: 2 * 1024 * 1024])
        await more.wait()
        await resp.write(data[2 * 1024 * 1024 :])
        return resp

    app = web.Application()
    app.router.add_get("/i.png", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/i.png"
    config = ClientConfig(credentials=Credentials("k"), retry=RetryPolicy(wait=False))
    core = Core(config, AiohttpTransport())
    out = tmp_path / "out"
    out.mkdir()
    import anyio
    import anyio.from_thread

    from fal_edit_async._files import TempFile

    written = anyio.Event()
    write = TempFile.write

    def write_and_tell(self: TempFile, chunks: list[bytes]) -> None:
        write(self, chunks)
        if threading.current_thread() is threading.main_thread():  # a write on the loop
            written.set()
        else:  # in a worker thread (a slow folder's, or with a checksum)
            anyio.from_thread.run_sync(written.set)

    monkeypatch.setattr(TempFile, "write", write_and_tell)

    try:
        async with anyio.create_task_group() as tg:
            done: list[object] = []

            async def download() -> None:
                image = ImageFile(url=url, file_size=len(data))
                try:
                    done.append(await download_image(core, image, out, "photo", 0))
                except DownloadError as exc:
                    done.append(exc)

            tg.start_soon(download)
            with anyio.fail_after(10):
                await written.wait()  # the first batch is in the .part file
            # The other container's batch prepares the shared folder.
            code = (
                "import sys; from pathlib import Path; "
                "from fal_edit_async._files import remove_stale_parts; "
                "print(remove_stale_parts(Path(sys.argv[1])))"
            )
            other = await anyio.run_process([*unshare, sys.executable, "-c", code, str(out)])
            more.set()
        assert b"0\n" == other.stdout, f"the live run's temp file was deleted: {done}"
        assert (out / "photo_0.png").read_bytes() == data
    finally:
        await core.aclose()
        await runner.cleanup()


# -- 4. the console and the report -----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_id", "shown"),
    [
        pytest.param("[link=https:evil.example]pay-here", "[link=", id="markup"),
        pytest.param("r\x1b[2J\x1b]0;owned\x07", "\\x1b", id="escape-codes"),
    ],
)
def test_a_request_id_from_the_server_is_shown_as_text_in_the_panel(
    request_id: str, shown: str
) -> None:
    """A request id is any header-safe string without '/' (``_usable_request_id``): the
    active-jobs table passes it to rich as a str, so rich parses it as markup, and control
    characters go to the terminal unescaped (names and log lines go through printable())."""
    from rich.console import Console

    from fal_edit_async._cli._display import LiveDisplay

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=200)
    progress = Progress(1, clock=lambda: 0.0)
    progress.on_event(ItemSubmitted(key="photo", request_id=request_id))
    console.print(LiveDisplay(progress, console).render())
    text = buffer.getvalue()
    assert shown in text
    assert "\x1b[2J" not in text


def _non_utf8_input(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as f:  # Latin-1 name
        f.write(make_png())
    return folder


def test_a_file_name_that_is_not_utf8_does_not_stop_the_run(tmp_path: Path) -> None:
    """``café.png`` saved by a Latin-1 system (``caf\\xe9.png``): safe_stem() calls
    ``str.encode()`` on the surrogate-escaped name and the UnicodeEncodeError escapes
    Runner.run, so the whole batch ends with "internal error" (exit 1), nothing edited."""
    folder = _non_utf8_input(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env |= {"PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"}
    argv = ["edit", PROMPT, str(folder), "--emulator", "--out", str(tmp_path / "out"), "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "fal_edit_async", *argv],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr.decode(errors="replace")


def test_the_report_is_written_for_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """A page is written (``--report``, ``fal-edit report``) for an input or output whose
    name is not UTF-8; today quote() and write_text(encoding='utf-8') raise."""
    folder = _non_utf8_input(tmp_path)
    (name,) = [p for p in folder.iterdir()]
    page = tmp_path / "report.html"
    row = Row(key=name.stem, outcome="done", inputs=[str(name)], outputs=[str(name)])
    from fal_edit_async._cli._html import _write

    _write(page, render([row], page, title="t", totals=[]))
    assert page.exists()


def test_out_that_holds_a_symlinked_input_is_refused(tmp_path: Path) -> None:
    """``photos/a.png`` is a symlink to ``elsewhere/a.png``; ``--out photos`` is accepted,
    since the check compares the resolved input's folder, not the folder the input is in:
    a later ``fal-edit edit ... photos`` takes the outputs for inputs."""
    real = tmp_path / "elsewhere" / "a.png"
    real.parent.mkdir()
    real.write_bytes(make_png())
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").symlink_to(real)
    planned = plan_edit(PROMPT, expand([str(photos)]), {}, together=False)
    with pytest.raises(UsageError):
        check_out_folder(photos, planned)


async def test_a_file_name_that_is_not_utf8_fails_at_most_its_own_item(
    client: AsyncClient, tmp_path: Path
) -> None:
    """Runner.run "never raises but cancellation": a Path input whose name holds a
    surrogate escape raises UnicodeEncodeError from safe_stem() out of edit_many, taking
    every other item (some already submitted and paid) down with it."""
    folder = _non_utf8_input(tmp_path)
    (bad,) = list(folder.iterdir())
    good = folder / "good.png"
    good.write_bytes(make_png(color=(9, 9, 9)))
    items = [
        EditImageInput(prompt="p", image_urls=[good]),
        EditImageInput(prompt="p", image_urls=[bad]),
    ]
    async with client.edit_many(items, download_to=tmp_path / "out") as batch:
        results = [r async for r in batch]
    assert 2 == len(results)
    assert any(r.ok for r in results)


def test_a_line_that_cannot_be_encoded_is_not_a_closed_stdout() -> None:
    """JsonReporter catches ValueError as "write to a closed file"; UnicodeEncodeError is a
    ValueError, so an unencodable name (or a stdout in ASCII, ``LANG=C`` without UTF-8
    mode) stops the run as if stdout were closed: jobs cancelled, exit 141."""
    from fal_edit_async import ItemResult, ItemState
    from fal_edit_async._cli._progress import Finished
    from fal_edit_async._cli._report import JsonReporter, OutputClosed

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")  # a C-locale stdout
    reporter = JsonReporter(Progress(1, clock=lambda: 0.0), out, io.StringIO())
    result = ItemResult(key="写真", index=0, state=ItemState.COMPLETED)
    try:
        reporter.result(Finished(result, "done", None, None, ()))
    except OutputClosed:
        pytest.fail("an open stdout was reported closed")


def test_a_dry_run_into_a_closed_pipe_exits_141(tmp_path: Path) -> None:
    """``fal-edit edit ... --dry-run --json | head -1``: the closed stdout is an OSError,
    reported "error: Broken pipe" with exit 1 (failures), not 141 as for a run."""
    from .test_cli_support import write_images

    write_images(tmp_path / "in", *(f"p{i}.png" for i in range(50)))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            [*CLI, "edit", PROMPT, str(tmp_path / "in"), "--dry-run", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write)
    assert 141 == done.returncode, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr


async def test_a_file_there_under_another_unicode_form_is_never_replaced(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """safe_stem() NFC-normalises output names, image_names_in() does not normalise the
    names already in the folder. ``cafe\\u0301_0.png`` (NFD, as macOS tools and rsync from
    HFS+ write it) is not seen as ``café_0``; on APFS/HFS+, which compare names
    normalisation-insensitively, the output ``café_0.png`` replaces it."""
    import unicodedata

    theirs = "cafe\u0301_0.png"  # NFD
    (tmp_path / theirs).write_bytes(b"theirs")
    async with client.edit_many([named("café", png_data_uri)], download_to=tmp_path) as batch:
        (result,) = [r async for r in batch]
    assert result.ok
    mine = result.files[0].path.name
    same = unicodedata.normalize("NFC", mine).casefold()
    assert same != unicodedata.normalize("NFC", theirs).casefold(), mine


async def test_a_job_interrupted_while_downloading_counts_as_spent(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Ctrl-C while an output downloads: the job COMPLETED on fal, so it is billed. The
    summary says "~$0.00 spent by this run, ~$0.27 for jobs left on fal that may still run"
    (and its JSON line has no ``sources``), where the guarantee splits cost into what this
    run's completed jobs spent."""
    import signal

    import anyio

    from .test_cli_process import _fal_env, _output
    from .test_cli_support import json_lines, write_images

    write_images(tmp_path / "in", "p.png")
    emulator.hold_downloads()
    argv = ["edit", PROMPT, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    process = await anyio.open_process([*CLI, *argv], env=_fal_env(emulator))
    async with process:
        await emulator.wait_downloads_held(1)
        process.send_signal(signal.SIGINT)
        out, err = await _output(process)
        assert 130 == await process.wait()
    emulator.release_downloads()
    assert "completed" == emulator.jobs[next(iter(emulator.jobs))].state.value.lower()
    assert "~$0.27 spent by this run" in err, err
    assert "may still run" not in err
    [record] = json_lines(out)
    assert [str(tmp_path / "in" / "p.png")] == record["sources"]
