"""The CLI's event loop: uvloop when installed (the ``speed`` extra), or as FAL_EDIT_LOOP says."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path
from typing import Any

import pytest

from fal_edit_async._cli import _commands, _loop, main
from fal_edit_async._cli._inputs import UsageError

from .test_cli_support import emulator_thread, json_lines, write_images

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not on Windows")


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.mark.parametrize("value", [None, "", "auto", "uvloop", " UVLOOP "])
def test_commands_run_on_uvloop_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """The dev extras install uvloop (``speed``), so "auto" must find it here."""
    if value is None:
        monkeypatch.delenv(_loop.LOOP_ENVIRONMENT, raising=False)
    else:
        monkeypatch.setenv(_loop.LOOP_ENVIRONMENT, value)
    assert "uvloop" == _loop.run(_loop_module)


def test_asyncio_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_loop.LOOP_ENVIRONMENT, "asyncio")
    assert "asyncio" == _loop.run(_loop_module)


def test_auto_without_uvloop_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert not _loop.use_uvloop({})
    wanted = r"FAL_EDIT_LOOP=uvloop, but uvloop cannot be imported .*: pip install uvloop"
    with pytest.raises(UsageError, match=wanted):
        _loop.use_uvloop({_loop.LOOP_ENVIRONMENT: "uvloop"})


def test_an_unknown_loop_is_a_usage_error_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [photo] = write_images(tmp_path, "cat.png")
    monkeypatch.setenv(_loop.LOOP_ENVIRONMENT, "trio")
    with emulator_thread(monkeypatch) as (_, emu):
        assert 2 == main(["edit", "x", str(photo), "--out", str(tmp_path / "out")])
        assert 0 == emu.counters.submits
    err = capsys.readouterr().err
    assert "FAL_EDIT_LOOP must be asyncio, uvloop or auto, not 'trio'" in err
    assert "internal error" not in err
    assert not (tmp_path / "out").exists()


def test_a_batch_with_a_journal_runs_on_uvloop_and_pays_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole batch path (submit, stream, result, download, journal) on uvloop; a rerun
    finds everything done and submits nothing."""
    monkeypatch.delenv(_loop.LOOP_ENVIRONMENT, raising=False)
    loops: list[str] = []
    run_batch = _commands.run_batch

    async def spy(*args: Any) -> int:
        loops.append(await _loop_module())
        return await run_batch(*args)

    monkeypatch.setattr(_commands, "run_batch", spy)
    photos = write_images(tmp_path / "in", "a.png", "b.png", "c.png")
    out, journal = tmp_path / "out", tmp_path / "journal.db"
    argv = ["edit", "x", *map(str, photos), "--out", str(out), "--journal", str(journal)]
    with emulator_thread(monkeypatch) as (_, emu):
        assert 0 == main(argv)
        assert 0 == main(argv)
        assert 3 == emu.counters.submits
    assert ["uvloop", "uvloop"] == loops
    assert ["a_0.png", "b_0.png", "c_0.png"] == sorted(p.name for p in out.iterdir())
    records = json_lines(capsys.readouterr().out)
    assert {"completed"} == {r["status"] for r in records}


@pytest.mark.parametrize(
    "source", ["raise RuntimeError('broken build')", "def (", "x = 1  # no new_event_loop"]
)
def test_a_broken_uvloop_falls_back_under_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """A uvloop that raises anything on import, or lacks new_event_loop, is not used by
    "auto" and is a usage error for "uvloop" (atk13: "internal error" before)."""
    (tmp_path / "uvloop.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "uvloop", raising=False)
    assert not _loop.use_uvloop({})
    monkeypatch.delitem(sys.modules, "uvloop", raising=False)
    with pytest.raises(UsageError, match="uvloop cannot be imported"):
        _loop.use_uvloop({_loop.LOOP_ENVIRONMENT: "uvloop"})
    monkeypatch.delitem(sys.modules, "uvloop", raising=False)


async def _young_threshold() -> int:
    return gc.get_threshold()[0]


def test_commands_collect_young_garbage_less_often_and_restore_the_threshold() -> None:
    """A command runs with the raised threshold; the caller's is back once it returns."""
    before = gc.get_threshold()
    gc.set_threshold(700, *before[1:])
    try:
        assert _loop.GC_THRESHOLD == _loop.run(_young_threshold)
        assert 700 == gc.get_threshold()[0]
        gc.set_threshold(0, *before[1:])  # the collector off: it stays off
        assert 0 == _loop.run(_young_threshold)
    finally:
        gc.set_threshold(*before)
