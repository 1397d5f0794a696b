"""The fal-edit command line, driven in-process."""

from __future__ import annotations

import pytest

from fal_edit_async._cli import main


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """fal-edit without a command exits 2 and names the commands."""
    with pytest.raises(SystemExit) as caught:
        main([])
    assert 2 == caught.value.code
    assert "COMMAND" in capsys.readouterr().err


def test_emulator_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    """fal-edit emulator --help documents the port, workers and fault options."""
    with pytest.raises(SystemExit) as caught:
        main(["emulator", "--help"])
    assert 0 == caught.value.code
    out = capsys.readouterr().out
    assert "--port" in out and "--workers" in out and "--rate-limit" in out
