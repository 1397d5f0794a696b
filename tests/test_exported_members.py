"""The public namespace: everything in ``__all__`` exists, is documented and reports home."""

from __future__ import annotations

import inspect
from importlib.resources import files

import pytest

import fal_edit_async

PUBLIC = fal_edit_async.__all__
CLASSES = [n for n in PUBLIC if inspect.isclass(getattr(fal_edit_async, n))]
FUNCTIONS = [n for n in PUBLIC if inspect.isfunction(getattr(fal_edit_async, n))]


def test_all_has_no_duplicates() -> None:
    """Each public name is listed once."""
    assert sorted(set(PUBLIC)) == sorted(PUBLIC)


def test_all_is_sorted() -> None:
    """__all__ is kept in plain sorted order, so additions land in one obvious place."""
    assert sorted(PUBLIC) == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_exists(name: str) -> None:
    """Every name in __all__ can be imported from the package."""
    assert hasattr(fal_edit_async, name)


@pytest.mark.parametrize("name", CLASSES)
def test_public_class_reports_the_package_as_its_module(name: str) -> None:
    """Public classes say ``fal_edit_async``, not a private module, in reprs and tracebacks."""
    assert "fal_edit_async" == getattr(fal_edit_async, name).__module__


@pytest.mark.parametrize("name", CLASSES + FUNCTIONS)
def test_public_name_has_a_docstring(name: str) -> None:
    """Every public class and function carries its own docstring."""
    obj = getattr(fal_edit_async, name)
    # A class's own __doc__ only: an inherited docstring describes the parent, not this name.
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__

    assert doc
    assert doc.strip()


@pytest.mark.parametrize("name", CLASSES)
def test_public_methods_and_properties_have_docstrings(name: str) -> None:
    """Public methods and properties defined on a public class are documented too."""
    cls = getattr(fal_edit_async, name)
    undocumented = [
        attr
        for attr, value in vars(cls).items()
        if not attr.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, property | classmethod))
        and not (inspect.getdoc(getattr(cls, attr)) or "").strip()
    ]

    assert [] == undocumented


def test_no_private_module_names_leak() -> None:
    """No underscore name other than __version__ is public."""
    assert ["__version__"] == [n for n in PUBLIC if n.startswith("_")]


def test_version_is_a_string() -> None:
    """__version__ is a non-empty version string."""
    assert isinstance(fal_edit_async.__version__, str)
    assert fal_edit_async.__version__


def test_package_is_typed() -> None:
    """The package ships py.typed, so mypy reads its annotations."""
    assert files("fal_edit_async").joinpath("py.typed").is_file()


def test_importing_the_package_leaves_aiohttp_and_anyio_for_first_use() -> None:
    """``import fal_edit_async`` (and so ``fal-edit --help``) does not pay for the HTTP stack;
    the first use of a name that needs it loads it, and the class still reports home."""
    import subprocess
    import sys

    code = (
        "import sys, fal_edit_async as f\n"
        "heavy = {'aiohttp', 'anyio'}\n"
        "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))\n"
        "assert f.AsyncClient.__module__ == 'fal_edit_async'\n"
        "assert heavy <= set(sys.modules)\n"
        "assert 'AsyncClient' in dir(f)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_name_is_an_attribute_error() -> None:
    """The lazy loader does not swallow typos."""
    with pytest.raises(AttributeError, match="Asyncclient"):
        _ = fal_edit_async.Asyncclient  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sync", "async_", "only_async"),
    [
        pytest.param("Client", "AsyncClient", {"aclose"}, id="Client"),  # close() instead
        pytest.param(
            "SyncJobHandle",
            "JobHandle",
            {"cancel_quietly", "fetch_result"},  # the async client's internals
            id="SyncJobHandle",
        ),
    ],
)
def test_the_sync_classes_have_every_async_verb(
    sync: str, async_: str, only_async: set[str]
) -> None:
    """The synchronous Client and its handle offer each public verb of their async twins."""
    verbs = {n for n in dir(getattr(fal_edit_async, async_)) if not n.startswith("_")}
    assert set() == verbs - only_async - set(dir(getattr(fal_edit_async, sync)))


@pytest.mark.parametrize(
    "verb", ["edit", "submit", "status", "result", "cancel", "download", "edit_many"]
)
def test_the_sync_client_takes_the_async_clients_arguments(verb: str) -> None:
    """Each verb of Client takes exactly the keyword arguments of AsyncClient's (a new batch
    option added to one and not the other fails here)."""

    def keywords(cls: type) -> list[str]:
        params = inspect.signature(getattr(cls, verb)).parameters.values()
        return [
            p.name
            for p in params
            if p.kind is not p.POSITIONAL_OR_KEYWORD or p.default is not p.empty
        ]

    assert keywords(fal_edit_async.AsyncClient) == keywords(fal_edit_async.Client)


def test_the_sync_client_takes_the_async_clients_settings() -> None:
    """Client() takes every setting AsyncClient() takes."""
    sync, async_ = (
        inspect.signature(c).parameters for c in (fal_edit_async.Client, fal_edit_async.AsyncClient)
    )
    assert list(async_) == list(sync)
