"""The emulator's public namespace: complete, sorted, documented, reporting home."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import fal_edit_async.emulator as emulator

PUBLIC = emulator.__all__
CLASSES = [n for n in PUBLIC if inspect.isclass(getattr(emulator, n))]
CALLABLES = CLASSES + [n for n in PUBLIC if inspect.isfunction(getattr(emulator, n))]


def test_all_is_sorted_and_exists() -> None:
    """__all__ is in plain sorted order and every name in it can be imported."""
    assert sorted(PUBLIC) == PUBLIC
    assert all(hasattr(emulator, name) for name in PUBLIC)


@pytest.mark.parametrize("name", CLASSES)
def test_classes_report_the_public_module(name: str) -> None:
    """Public classes say ``fal_edit_async.emulator`` in reprs and tracebacks."""
    assert "fal_edit_async.emulator" == getattr(emulator, name).__module__


@pytest.mark.parametrize("name", CALLABLES)
def test_public_names_are_documented(name: str) -> None:
    """Every public class and function, and each public method and property, has a docstring."""
    obj = getattr(emulator, name)
    assert (inspect.getdoc(obj) or "").strip()
    if inspect.isclass(obj):
        undocumented = [
            attr
            for attr, value in vars(obj).items()
            if not attr.startswith("_")
            and (inspect.isfunction(value) or isinstance(value, property))
            and not (inspect.getdoc(getattr(obj, attr)) or "").strip()
        ]
        assert [] == undocumented


def test_importing_the_emulator_leaves_the_server_for_first_use() -> None:
    """``import fal_edit_async.emulator`` loads no server; ``Emulator`` loads it and reports
    home."""
    code = (
        "import sys, fal_edit_async.emulator as e\n"
        "server = {'aiohttp', 'PIL', 'fal_edit_async.emulator._emulator'}\n"
        "assert not server & set(sys.modules), sorted(server & set(sys.modules))\n"
        "assert e.Emulator.__module__ == 'fal_edit_async.emulator'\n"
        "assert server <= set(sys.modules)\n"
        "assert 'Emulator' in dir(e)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_emulator_name_is_an_attribute_error() -> None:
    """The lazy loader does not swallow typos."""
    with pytest.raises(AttributeError, match="Emulater"):
        _ = emulator.Emulater  # type: ignore[attr-defined]
