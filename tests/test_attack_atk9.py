"""Attacks (round atk9) on temp files: their names (with the pid namespace tag), the newborn
mark, the writer's lock, and the cleaner that removes dead writers' files only
(_files.TempFile, _temp_suffix, _PID_NAMESPACE, remove_stale_parts, _remove_if_abandoned).

Four breaks were found, and fixed (each test below failed before its fix):

* a child forked while a temp file was being created (between ``os.open`` and the end of
  ``_create``) kept the file's lock, so a writer killed later left a file the next run kept
  for as long as that child lived (now a fork waits for the open and dup to be recorded,
  and the child repoints every descriptor recorded);
* a run killed between creating and locking its file, whose pid the next run in the same pid
  namespace happened to get, left a file that next run kept for ten minutes (now this
  process knows the names it is creating; any other with its pid is a dead run's);
* a process forked into a new pid namespace (``unshare(CLONE_NEWPID)`` then ``fork``) named
  its files with its parent's namespace tag, so a cleaner in the parent's namespace took its
  pid for a dead one there and removed a live writer's newborn file (now a child names its
  namespace again);
* ``_STALE_PART`` ended in ``$``, which also matches before a trailing newline: a user's
  file named like a temp file plus ``\\n`` was removed (now ``\\Z``).

The other tests are claims that held under the attack: a run killed at every system call of
a temp file's life, an end-to-end CLI killed mid-download and rerun, live writers in every
state seen from other processes and other pid namespaces, odd names and file types, another
user's files for a non-root cleaner, and names that parse back for any stem."""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fal_edit_async import _files
from fal_edit_async._files import TempFile, remove_stale_parts, safe_stem
from fal_edit_async._name_template import NameTemplate
from fal_edit_async.emulator import Emulator

from ._cli_runs import cli_env, dead_pid, edit_args, edit_command
from .conftest import make_png
from .test_cli_support import json_lines

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX temp-file locks")

TAG = _files._PID_NAMESPACE


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _read_exactly(fd: int, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = os.read(fd, n - len(got))
        assert chunk, f"the other end closed after {got!r}"
        got += chunk
    return got


def _wait_exit(pid: int) -> None:
    """Wait until ``pid`` (not our child) has exited, all its files closed (pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], 30)
    finally:
        os.close(fd)


def _script(script: str, *args: object, unshare: bool = False, timeout: float = 60) -> Any:
    """Run ``script`` in a fresh interpreter (in a new pid namespace with ``unshare``) and
    return what it printed, as JSON; its failure fails the test."""
    prefix = [*_UNSHARE] if unshare else []
    done = subprocess.run(
        [*prefix, sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return json.loads(done.stdout)


def _unshare_works() -> bool:
    if TAG is None or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(
            [*_UNSHARE, sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "1"


_UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]
needs_unshare = pytest.mark.skipif(
    not _unshare_works(), reason="needs root and unshare --pid --fork --mount-proc"
)
needs_tag = pytest.mark.skipif(TAG is None, reason="no /proc: names carry no namespace")


# -- 1. a run killed at any instant leaves nothing the next run keeps ------------------------

_KILLED_AT_EVERY_POINT = r"""
import json, os, signal, sys
from pathlib import Path
from fal_edit_async import _files

root = Path(sys.argv[1])
real_os, real_fcntl = _files.os, _files.fcntl
state = {"n": 0, "at": 0, "report": -1}


def point(when, name):
    state["n"] += 1
    if state["n"] == state["at"]:
        real_os.write(state["report"], f"{when} {name}".encode())
        real_os.kill(real_os.getpid(), signal.SIGKILL)


class Traced:
    # _files' os and fcntl, with a kill point before and after each system call it makes
    def __init__(self, real, names):
        self._real, self._names = real, names

    def __getattr__(self, name):
        value = getattr(self._real, name)
        if name not in self._names:
            return value

        def traced(*args, **kwargs):
            point("before", name)
            try:
                return value(*args, **kwargs)
            finally:
                point("after", name)

        return traced


CALLS = {"open", "fstat", "dup", "fchmod", "fdopen", "writev", "write", "fsync", "link",
         "replace", "unlink", "close", "lstat", "stat"}


def life(folder):
    _files.check_writable(folder)
    a = _files.TempFile(folder, "a_0", fsync=True, checksum=True)
    a.write([b"x" * 100])
    a.commit([b"y"], folder / "a_0.png")
    b = _files.TempFile(folder, "b_0", fsync=False, checksum=False)
    b.commit([b"z"], folder / "b_0.png", replace=False)
    clash = _files.TempFile(folder, "a_0", fsync=False, checksum=False)
    try:
        clash.commit([b"w"], folder / "a_0.png", replace=False)
    except FileExistsError:
        clash.discard()
    gone = _files.TempFile(folder, "c_0", fsync=False, checksum=False)
    gone.write([b"q"])
    gone.discard()


results, at = [], 1
while True:
    folder = root / str(at)
    folder.mkdir()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _files.os, _files.fcntl = Traced(real_os, CALLS), Traced(real_fcntl, {"flock"})
        state["at"], state["report"] = at, w
        life(folder)
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    results.append([at, os.waitstatus_to_exitcode(status), os.read(r, 100).decode()])
    os.close(r)
    if status == 0:
        break
    at += 1
print(json.dumps(results))
"""


@needs_tag
def test_a_run_killed_at_every_system_call_of_a_temp_files_life_leaves_nothing_kept(
    tmp_path: Path,
) -> None:
    """A writer's whole repertoire (the writability probe, a file written in two batches and
    renamed, one linked into a new name, one that clashes and is discarded, one discarded),
    killed with SIGKILL before and after each of its system calls in turn (between os.open
    and flock, flock and fchmod, link and unlink...). After each kill the next run (another
    process in this pid namespace) leaves no temp file, and no output is ever half-written."""
    results = _script(_KILLED_AT_EVERY_POINT, tmp_path)
    labels = {label for _, _, label in results}
    assert {"after open", "before flock", "after flock", "before fchmod", "after link"} <= labels
    assert all(code == -signal.SIGKILL for _, code, _ in results[:-1])
    assert 0 == results[-1][1] and len(results) > 80
    left: dict[str, list[str]] = {}
    newborn = 0  # kills that left a file created and not yet locked
    for at, _, label in results:
        folder = tmp_path / str(at)
        newborn += any((folder / name).stat().st_mode & stat.S_ISVTX for name in _hidden(folder))
        remove_stale_parts(folder)
        if _hidden(folder):
            left[f"{at}: {label}"] = _hidden(folder)
        outputs = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert outputs.get("a_0.png", b"x" * 100 + b"y") == b"x" * 100 + b"y"
        assert outputs.get("b_0.png", b"z") == b"z"
    assert {} == left
    assert newborn >= 10  # the open-to-fchmod window of each of the five files, and more


_KILLED_THEN_SAME_PID = r"""
import json, os, signal, sys
from pathlib import Path
from fal_edit_async import _files

folder = Path(sys.argv[1])
first = os.fork()
if first == 0:  # the run killed between creating its temp file and locking it
    _files._hold = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    _files.TempFile(folder, "a_0", fsync=False, checksum=False).write([b"x"])
    os._exit(3)
_, status = os.waitpid(first, 0)
with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # the next run gets the same pid
    f.write(str(first - 1))
r, w = os.pipe()
second = os.fork()
if second == 0:
    os.close(r)
    removed = _files.remove_stale_parts(folder)
    left = sorted(p.name for p in folder.iterdir())
    os.write(w, json.dumps([os.getpid(), removed, left]).encode())
    os._exit(0)
os.close(w)
pid, removed, left = json.loads(os.read(r, 65536))
os.waitpid(second, 0)
later = _files.remove_stale_parts(folder)  # pid 1: not the dead run's pid
print(json.dumps({"first": first, "status": status, "second": pid, "removed": removed,
                  "left": left, "later": later}))
"""


@needs_unshare
def test_a_run_killed_before_locking_leaves_nothing_for_a_next_run_that_has_its_pid(
    tmp_path: Path,
) -> None:
    """In a fresh pid namespace (unshare): a run is killed between os.open and flock; the
    next run in that namespace is given the same pid (pids are reused: ns_last_pid here,
    wrap-around or a checkpoint/restore elsewhere). Its cleaner should remove the dead run's
    newborn file at once, as it does when the pid differs."""
    seen = _script(_KILLED_THEN_SAME_PID, tmp_path, unshare=True)
    assert signal.SIGKILL == seen["status"]
    if seen["first"] != seen["second"]:
        pytest.skip(f"the next run did not get the dead run's pid: {seen}")
    assert [] == seen["left"] and 1 == seen["removed"], seen
    assert 0 == seen["later"]  # nothing left for a run with any other pid


_FORKS_WHILE_CREATING = r"""
import os, signal, sys
from pathlib import Path
from fal_edit_async import _files

folder, where, ready, hold = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def fork_here():  # what another thread's os.fork (multiprocessing's) does at this instant
    if os.fork() == 0:
        os.write(ready, b"child %d\n" % os.getpid())  # its fork handlers have run
        os.read(hold, 1)  # it lives on, doing something else, until the test lets it go
        os._exit(0)


if where == "before-lock":
    real_hold = _files._hold

    def _hold(fd):
        fork_here()
        return real_hold(fd)

    _files._hold = _hold
elif where == "before-fchmod":
    real_fchmod = os.fchmod

    def fchmod(fd, mode):
        fork_here()
        return real_fchmod(fd, mode)

    os.fchmod = fchmod
temp = _files.TempFile(folder, "a_0", fsync=False, checksum=False)
temp.write([b"bytes"])
if where == "after-create":
    fork_here()
os.write(ready, b"writer\n")
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(
    "where",
    [
        "after-create",
        "before-lock",
        "before-fchmod",
    ],
)
def test_a_child_forked_at_any_instant_never_keeps_a_killed_writers_file(
    tmp_path: Path, where: str
) -> None:
    """The writer's process forks (as another of its threads may at any instant) once while
    creating a temp file, then is killed with SIGKILL. The child lives on; the next run
    removes the dead writer's file, because the child let go of it when it was forked."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    args = [str(tmp_path), where, str(ready_w), str(hold_r)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _FORKS_WHILE_CREATING, *args], pass_fds=(ready_w, hold_r)
    )
    os.close(ready_w)
    os.close(hold_r)
    lines = os.fdopen(ready_r, "rb")
    child = 0
    try:
        assert -signal.SIGKILL == proc.wait(timeout=30)
        said = sorted(lines.readline().split() for _ in range(2))
        assert said[1] == [b"writer"], said
        child = int(said[0][1])
        assert 1 == len(_hidden(tmp_path))
        removed = remove_stale_parts(tmp_path)
        left = _hidden(tmp_path)
    finally:
        os.close(hold_w)  # the child exits
        if child:
            _wait_exit(child)
        lines.close()
        remove_stale_parts(tmp_path)
    assert [] == left and 1 == removed


# -- 1. end to end: the CLI killed at moments of its downloads, then run again --------------


FOUR = ("--concurrency", "4")

_KILL_AT_LOCK = r"""
import os, runpy, signal, sys
from fal_edit_async import _files

real, calls, at = _files._hold, [0], int(os.environ["ATK9_KILL_AT_LOCK"])


def _hold(fd):  # the at-th temp file (the first is the writability probe): created, unlocked
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fd)


_files._hold = _hold
sys.argv[0] = "fal_edit_async"
runpy.run_module("fal_edit_async", run_name="__main__", alter_sys=True)
"""


_MOMENTS = random.Random(9).sample(range(2, 9), 2)


@needs_tag
@pytest.mark.parametrize(
    "kill",
    [
        "lock:1",  # the writability probe, created and not yet locked
        "lock:4",  # the third download's temp file, created and not yet locked
        *(f"downloads:{n}" for n in _MOMENTS),  # as the n-th body has just been sent
    ],
)
async def test_a_cli_killed_mid_download_then_rerun_leaves_no_temp_file_and_pays_once(
    emulator: Emulator, tmp_path: Path, kill: str
) -> None:
    """fal-edit with a journal over 8 inputs is killed with SIGKILL between creating a temp
    file and locking it, or the moment the emulator has sent the n-th image; the rerun (same
    pid namespace, another pid) finishes the batch. No temp file is left, no input is billed
    twice, and every input fal saw has its output."""
    n = 8
    (tmp_path / "in").mkdir()
    for i in range(n):
        (tmp_path / "in" / f"p{i}.png").write_bytes(make_png((24, 16), (i * 9, 40, 80)))
    out = tmp_path / "out"
    how, _, at = kill.partition(":")
    with anyio.fail_after(60):  # a hang backstop, not a measurement
        if how == "lock":
            env = cli_env(emulator, ATK9_KILL_AT_LOCK=at)
            killing = [sys.executable, "-c", _KILL_AT_LOCK, *edit_args(tmp_path, *FOUR)]
            first = await anyio.run_process(killing, env=env, check=False)
            assert -signal.SIGKILL == first.returncode, first.stderr
            infos = [(out / name).stat() for name in _hidden(out)]
            # the file it was killed over (beside any other download in flight): empty, and
            # still marked newborn
            assert any(i.st_size == 0 and i.st_mode & stat.S_ISVTX for i in infos), infos
        else:
            command = edit_command(tmp_path, *FOUR)
            process = await anyio.open_process(command, env=cli_env(emulator))
            async with process:
                await emulator.wait_until(lambda: emulator.counters.downloads >= int(at))
                process.send_signal(signal.SIGKILL)
                assert -signal.SIGKILL == await process.wait()
        command = edit_command(tmp_path, *FOUR)
        second = await anyio.run_process(command, env=cli_env(emulator), check=False)
    counters = emulator.counters
    assert max(counters.billed_by_input.values()) <= 1
    assert [] == _hidden(out)
    records = json_lines(second.stdout.decode())
    assert n == len(records), second.stderr
    left = [r["input"] for r in records if r["status"] != "completed"]
    assert {"unknown"} >= {r["status"] for r in records if r["input"] in left}
    assert n == len(counters.submits_by_input) + len(left)
    names = sorted(p.name for p in out.iterdir())
    for i in range(n):
        if f"p{i}" not in left:
            assert any(name.startswith(f"p{i}_") for name in names), (i, names)


# -- 2. a live writer's temp file is never removed -------------------------------------------

_HELD_WRITER = r"""
import json, os, sys, threading
from pathlib import Path
from fal_edit_async import _files

folder, ready, hold, want = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if want:  # pid 1 of a fresh pid namespace: the writer is forked under a pid dead outside it
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(want - 1))
    child = os.fork()
    if child:
        os.close(ready)
        os.close(hold)
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status))
    assert os.getpid() == want, os.getpid()
real_hold, real_fchmod = _files._hold, os.fchmod


def held(step):
    os.write(ready, step)
    os.read(hold, 1)  # until the test closes its end


def _hold(fd):
    if threading.current_thread().name == "newborn":
        held(b"n")  # created, still marked newborn, not locked
    return real_hold(fd)


def fchmod(fd, mode):
    if threading.current_thread().name == "marked":
        held(b"m")  # locked, still marked newborn
    return real_fchmod(fd, mode)


_files._hold, os.fchmod = _hold, fchmod
done = {}


def write(name, first=b""):
    try:
        temp = _files.TempFile(folder, name, fsync=False, checksum=False)
        if first:
            temp.write([first])
            held(b"l")  # locked, bytes written
        temp.commit([name.encode()], folder / f"{name}.png")
        done[name] = "ok"
    except OSError as exc:
        done[name] = repr(exc)


threads = [threading.Thread(target=write, args=(n,), name=n) for n in ("newborn", "marked")]
for t in threads:
    t.start()
write("locked", b"half of it, ")
for t in threads:
    t.join()
print(json.dumps(done), flush=True)
"""

_CLEANER = (
    "import sys; from pathlib import Path; from fal_edit_async._files import remove_stale_parts;"
    " print(remove_stale_parts(Path(sys.argv[1])))"
)


def _clean(where: str, folder: Path) -> int:
    if where == "here":
        return remove_stale_parts(folder)
    removed: int = _script(_CLEANER, folder, unshare=True, timeout=30)
    return removed


@needs_unshare
@pytest.mark.parametrize(
    ("writer", "cleaner"),
    [
        ("host", "here"),  # another live process, this pid namespace
        ("namespace", "here"),  # another pid namespace, its writer's pid dead here
        ("host", "namespace"),  # a cleaner in a fresh namespace, where the pid is dead
        ("namespace", "namespace"),  # two other namespaces, the pid dead in both
    ],
)
def test_a_live_writers_temp_files_in_every_state_survive_any_pid_namespaces_cleaner(
    tmp_path: Path, writer: str, cleaner: str
) -> None:
    """A live writer holds three temp files: one created and not yet locked (newborn), one
    locked but still marked newborn, one locked with bytes in it. Cleaners run in this
    process or in a fresh pid namespace, with the writer in this namespace or in another
    under a pid that is dead here: every file stays, and the writer publishes all three."""
    dead = dead_pid()
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    prefix = _UNSHARE if writer == "namespace" else []
    want = dead if writer == "namespace" else 0
    args = [str(tmp_path), str(ready_w), str(hold_r), str(want)]
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", _HELD_WRITER, *args],
        pass_fds=(ready_w, hold_r),
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(ready_w)
    os.close(hold_r)
    try:
        assert b"lmn" == bytes(sorted(_read_exactly(ready_r, 3)))
        parts = {p.name.partition(".fal-edit-")[0]: p for p in tmp_path.iterdir()}
        assert {".newborn", ".marked", ".locked"} == set(parts)
        pid = want or proc.pid
        for path in parts.values():
            found = _files._STALE_PART.match(path.name)
            assert found is not None and pid == int(found.group(1))
            assert (found.group(2) == TAG) == (writer == "host")
        for name, newborn in ((".newborn", True), (".marked", True), (".locked", False)):
            assert newborn == bool(parts[name].stat().st_mode & stat.S_ISVTX), name
        removed = [_clean(cleaner, tmp_path) for _ in range(3)]
        still = sorted(p.name for p in parts.values() if p.exists())
    finally:
        os.close(hold_w)
        out, _ = proc.communicate(timeout=30)
        os.close(ready_r)
    assert [0, 0, 0] == removed
    assert sorted(p.name for p in parts.values()) == still
    assert {"newborn": "ok", "marked": "ok", "locked": "ok"} == json.loads(out)
    assert [] == _hidden(tmp_path)


def test_this_processs_writers_in_every_state_survive_a_cleaner_loop_beside_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in one process: writer threads held between os.open and flock, and between
    flock and fchmod (not yet listed as live, or listed and still marked), while another
    thread cleans the folder over and over. Nothing is removed; both are published."""
    real_hold, real_fchmod = _files._hold, os.fchmod
    reached = {name: threading.Event() for name in ("newborn", "marked")}
    go = threading.Event()

    def held(name: str) -> None:
        if threading.current_thread().name == name:
            reached[name].set()
            assert go.wait(30)

    def hold(fd: int) -> int | None:
        held("newborn")
        return real_hold(fd)

    def fchmod(fd: int, mode: int) -> None:
        held("marked")
        real_fchmod(fd, mode)

    monkeypatch.setattr(_files, "_hold", hold)
    monkeypatch.setattr(os, "fchmod", fchmod)
    published: dict[str, object] = {}

    def write(name: str) -> None:
        temp = TempFile(tmp_path, name, fsync=False, checksum=False)
        try:
            temp.commit([name.encode()], tmp_path / f"{name}.png")
            published[name] = True
        except OSError as exc:
            published[name] = exc

    threads = [threading.Thread(target=write, args=(n,), name=n) for n in reached]
    for t in threads:
        t.start()
    try:
        assert all(event.wait(30) for event in reached.values())
        assert 2 == len(_hidden(tmp_path))
        removed = [0]
        stop = threading.Event()

        def cleaner() -> None:
            while not stop.is_set():
                removed[0] += remove_stale_parts(tmp_path)

        sweeper = threading.Thread(target=cleaner)
        sweeper.start()
        for _ in range(200):
            removed[0] += remove_stale_parts(tmp_path)
        stop.set()
        sweeper.join()
        assert 2 == len(_hidden(tmp_path)) and 0 == removed[0]
    finally:
        go.set()
        for t in threads:
            t.join()
    assert {"newborn": True, "marked": True} == published
    assert [] == _hidden(tmp_path)


_FORKED_INTO_A_NEW_NAMESPACE = r"""
import ctypes, os, sys
from pathlib import Path
from fal_edit_async import _files

folder, dead, ready, hold = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x20000000) != 0:  # CLONE_NEWPID: this process's children go in a new one
    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")
init = os.fork()
if init == 0:  # pid 1 there
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(dead - 1))
    writer = os.fork()
    if writer == 0:
        real = _files._hold

        def _hold(fd):  # created, not yet locked: the test looks now
            os.write(ready, b"%d %s\n" % (os.getpid(), _files._pid_namespace().encode()))
            os.read(hold, 1)
            return real(fd)

        _files._hold = _hold
        temp = _files.TempFile(folder, "a_0", fsync=False, checksum=False)
        try:
            temp.commit([b"bytes"], folder / "a_0.png")
            os.write(ready, b"published\n")
        except OSError as exc:
            os.write(ready, repr(exc).encode() + b"\n")
        os._exit(0)
    os.waitpid(writer, 0)
    os._exit(0)
os.waitpid(init, 0)
"""


@needs_unshare
def test_a_writer_forked_into_a_new_pid_namespace_keeps_its_temp_file(tmp_path: Path) -> None:
    """A process that imported the library calls unshare(CLONE_NEWPID) and forks: its child
    is in a new pid namespace (pid 1 there forks the writer under a pid dead out here). The
    writer creates a temp file; a cleaner in the original namespace runs before it locks it.
    The live writer's file must stay, and be published."""
    dead = dead_pid()
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    args = [str(tmp_path), str(dead), str(ready_w), str(hold_r)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _FORKED_INTO_A_NEW_NAMESPACE, *args], pass_fds=(ready_w, hold_r)
    )
    os.close(ready_w)
    os.close(hold_r)
    lines = os.fdopen(ready_r, "rb")
    try:
        pid, namespace = lines.readline().split()
        assert dead == int(pid) and TAG != namespace.decode()  # another namespace indeed
        [part] = _hidden(tmp_path)
        removed = remove_stale_parts(tmp_path)
        kept = (tmp_path / part).exists()
    finally:
        os.close(hold_w)
        said = lines.readline().strip()
        lines.close()
        proc.wait(timeout=30)
    assert 0 == removed and kept
    assert b"published" == said


# -- 3. only names of this exact form are touched ---------------------------------------------


def test_a_user_file_named_like_a_temp_file_plus_a_newline_is_kept(tmp_path: Path) -> None:
    """Not of the form: a user's file whose name ends in '.part\\n' is no temp file."""
    dead = dead_pid()
    names = [f".notes_0.fal-edit-{dead}-1.part\n"]
    if TAG is not None:
        names.append(f".notes_1.fal-edit-{dead}-2-{TAG}.part\n")
    for name in names:
        (tmp_path / name).write_bytes(b"the user's own notes")
    assert 0 == remove_stale_parts(tmp_path)
    assert sorted(names) == sorted(p.name for p in tmp_path.iterdir())


def _not_temp_names(dead: int) -> list[str]:
    tag = TAG or "0123abcd"
    return [
        ".notes.2023-12.part",
        f".notes.{dead}-12.part",
        ".x.fal-edit-1-2-XYZ.part",
        f".x.fal-edit-{dead}-2-XYZ.part",
        f".x.fal-edit-{dead}-2-{tag.upper()}.part" if tag != tag.upper() else ".x.upper.part",
        f".x.fal-edit-{dead}-2-{tag[:7]}.part",
        f".x.fal-edit-{dead}-2-{tag}0.part",
        f".x.fal-edit-{dead}-2-{tag}-{tag}.part",
        f"x.fal-edit-{dead}-1.part",  # not hidden
        f"..fal-edit-{dead}-1.part",  # no stem
        f".fal-edit-{dead}-1.part",
        f".x.fal-edit-{dead}-1.part.bak",
        f".x.fal-edit-{dead}-1-{tag}.PART",
        f".x.fal-edit-{dead}-1.part ",
        f" .x.fal-edit-{dead}-1.part",
        f".x.fal-edit--1-{tag}.part",
        f".x.fal-edit-{dead}-.part",
        f".x.fal-edit-{dead}-g1.part",
        f".x.fal-edit-{dead}-1-.part",
        f".x.fal_edit-{dead}-1.part",
        f".x.Fal-Edit-{dead}-1.part",
        ".x.fal-edit-\uff11\uff12\uff13-1.part",  # full-width digits
        f".x.fal-edit-{dead}-\u0661.part",  # an Arabic-Indic digit for the counter
        f".x.fal-edit-+{dead}-1.part",
        f".x.fal-edit-{dead}-1\u2028.part",
        f".x.fal-edit-{dead}-1.part\u2028",
        f".x.fal-edit-{dead}-1.part\r",
        f".x\n.fal-edit-{dead}-1.part",  # '.' never matches the newline in the stem
    ]


def test_only_names_of_the_exact_temp_form_are_touched(tmp_path: Path) -> None:
    """Regular, unlocked, abandoned-looking files (dead pid; with data, or empty, newborn and
    an hour old) whose names are near misses of the temp form are all kept; one of the
    exact form beside them is removed (so the cleaner did look)."""
    dead = dead_pid()
    names = _not_temp_names(dead)
    tail = "" if TAG is None else f"-{TAG}"
    for variant in ("data", "newborn"):
        folder = tmp_path / variant
        folder.mkdir()
        for name in names:
            path = folder / name
            if variant == "data":
                path.write_bytes(b"user data")
            else:
                path.touch()
                path.chmod(0o1644)
                os.utime(path, (0, 0))
        real = folder / f".a_0.fal-edit-{dead}-1{tail}.part"
        real.write_bytes(b"abandoned")
        assert 1 == remove_stale_parts(folder), variant
        assert not real.exists()
        assert sorted(names) == sorted(p.name for p in folder.iterdir()), variant


@pytest.fixture
def odd_things(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Make an odd file-system object at a name; UNIX sockets are closed afterwards."""
    sockets: list[socket.socket] = []
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.png").write_bytes(b"precious")
    folder = tmp_path / "out"
    folder.mkdir()

    def make(kind: str) -> Path:
        dead = dead_pid()
        tail = "" if TAG is None else f"-{TAG}"
        path = folder / f".{kind}_0.fal-edit-{dead}-1{tail}.part"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
            (path / "inside").write_bytes(b"inside")
        elif kind == "socket":  # bound at a short path (108 bytes at most), then moved
            Path("/tmp/atk9").mkdir(exist_ok=True)
            short = Path(tempfile.mkdtemp(dir="/tmp/atk9")) / "s"
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(os.fspath(short))
            sockets.append(sock)
            try:
                os.rename(short, path)
            except OSError as exc:
                pytest.skip(f"cannot move a socket into the folder: {exc}")
            finally:
                shutil.rmtree(short.parent)
        elif kind == "device":
            if os.geteuid() != 0:
                pytest.skip("needs root to make a device node")
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        elif kind.startswith("symlink"):
            abandoned = outside / f".abandoned.fal-edit-{dead}-9{tail}.part"
            abandoned.touch()
            abandoned.chmod(0o1644)  # newborn, and old
            os.utime(abandoned, (0, 0))
            target = {
                "symlink-file": outside / "precious.png",
                "symlink-abandoned": abandoned,
                "symlink-dangling": outside / "nothing",
                "symlink-folder": outside,
            }[kind]
            path.symlink_to(target)
        return path

    yield make
    for sock in sockets:
        sock.close()


ODD_KINDS = [
    "fifo",
    "directory",
    "socket",
    "device",
    "symlink-file",
    "symlink-abandoned",
    "symlink-dangling",
    "symlink-folder",
]


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_odd_objects_named_exactly_like_an_abandoned_temp_file_are_never_removed(
    odd_things: Callable[[str], Path], kind: str
) -> None:
    """A FIFO, folder, socket, device node or symlink (to a user's file, to a dead run's
    real temp file, to nothing, to a folder) under a dead run's exact temp name, with this
    namespace's tag: nothing is removed or followed, and nothing blocks."""
    path = odd_things(kind)
    outside = path.parent.parent / "outside"
    before = sorted(p.name for p in outside.iterdir())
    assert 0 == remove_stale_parts(path.parent)
    assert os.path.lexists(path)
    assert before == sorted(p.name for p in outside.iterdir())
    assert b"precious" == (outside / "precious.png").read_bytes()
    if kind == "directory":
        assert b"inside" == (path / "inside").read_bytes()


_AS_NOBODY = r"""
import json, os, sys
from pathlib import Path
from fal_edit_async._files import remove_stale_parts
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
folder = Path(sys.argv[1])
print(json.dumps([remove_stale_parts(folder), sorted(p.name for p in folder.iterdir())]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files for two users")
def test_a_non_root_cleaner_never_removes_another_users_temp_files(tmp_path: Path) -> None:
    """The cleaner runs as nobody in a folder it may write (so it could unlink anything in
    it): root's abandoned temp files, readable and writable by all or by root only, with
    data or newborn, are kept; nobody's own abandoned one is removed."""
    Path("/tmp/atk9").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir="/tmp/atk9"))
    try:
        folder.chmod(0o777)
        dead = dead_pid()
        tail = "" if TAG is None else f"-{TAG}"
        theirs = {
            f".open_0.fal-edit-{dead}-1{tail}.part": 0o666,
            f".closed_0.fal-edit-{dead}-2{tail}.part": 0o600,
            f".newborn_0.fal-edit-{dead}-3{tail}.part": 0o1666,
        }
        for name, mode in theirs.items():
            path = folder / name
            path.write_bytes(b"" if mode & stat.S_ISVTX else b"root's")
            path.chmod(mode)
        mine = folder / f".mine_0.fal-edit-{dead}-4{tail}.part"
        mine.write_bytes(b"nobody's")
        os.chown(mine, 65534, 65534)
        removed, left = _script(_AS_NOBODY, folder, timeout=30)
        assert 1 == removed
        assert sorted(theirs) == left
    finally:
        shutil.rmtree(folder)


# -- 4. names parse back for any stem -----------------------------------------------------------

_TEMPLATES = ["{stem}_{n}.{ext}", "{key}-{n:08}.{ext}", "{stem}.{request_id}.{key}_{n}.{ext}"]
_ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=120)
_MARKER = st.builds(
    lambda a, pid, counter, tag, b: f"{a}.fal-edit-{pid}-{counter:x}-{tag}.part{b}",
    _ANY_TEXT,
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.text("0123456789abcdef", min_size=8, max_size=8),
    _ANY_TEXT,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stem=st.one_of(_ANY_TEXT, _MARKER),
    key=st.one_of(_ANY_TEXT, _MARKER),
    request_id=_ANY_TEXT,
    template=st.sampled_from(_TEMPLATES),
    claim=st.integers(1, 10**6),
    n=st.integers(0, 10**7),
)
def test_a_temp_files_name_parses_back_and_fits_for_any_stem(
    tmp_path: Path, stem: str, key: str, request_id: str, template: str, claim: int, n: int
) -> None:
    """Any Unicode stem, key and request id (surrogates, marks, look-alikes of the temp
    marker itself), through safe_stem and a name template at its longest: the temp file can
    be created (under 255 bytes), is listed under exactly its name, parses back to this
    process's pid and namespace, is kept while live and leaves nothing once committed."""
    base = NameTemplate.parse(template).base(
        stem=safe_stem(stem), claim=claim, n=n, key=key, request_id=request_id
    )
    with tempfile.TemporaryDirectory(dir=tmp_path) as name:
        _parses_back(Path(name), base)


def _parses_back(folder: Path, base: str) -> None:
    temp = TempFile(folder, base, fsync=False, checksum=False)
    name = temp.path.name
    found = _files._STALE_PART.match(name)
    assert found is not None and found.end() == len(name)
    assert os.getpid() == int(found.group(1))
    assert TAG == found.group(2)
    assert name.startswith(f".{base}.fal-edit-")
    temp.write([b"bytes"])
    try:
        assert len(name.encode()) <= 255
        assert [name] == os.listdir(folder)
        assert 0 == remove_stale_parts(folder)
    finally:
        temp.commit([], folder / f"{base}.png")
    assert [f"{base}.png"] == os.listdir(folder)
