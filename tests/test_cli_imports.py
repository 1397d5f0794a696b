"""The command line is a client of the public API: nothing in ``fal_edit_async._cli`` imports
the library's private modules or reaches into private attributes.

Every import statement is read from the source (the AST), wherever it sits: at the top, inside
a function, under ``try`` or under ``if TYPE_CHECKING:``. An import is allowed when it is
stdlib or third-party, a sibling inside ``fal_edit_async._cli``, a name in
``fal_edit_async.__all__`` or ``fal_edit_async.emulator.__all__``, or on :data:`ALLOWED_PRIVATE`.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

import fal_edit_async
import fal_edit_async._cli
import fal_edit_async.emulator

PACKAGE = "fal_edit_async"
CLI = "fal_edit_async._cli"
CLI_DIR = Path(fal_edit_async._cli.__file__).parent
PUBLIC = {
    PACKAGE: frozenset(fal_edit_async.__all__),
    "fal_edit_async.emulator": frozenset(fal_edit_async.emulator.__all__),
}
#: Private names the CLI may import, each with the reason it has no public spelling.
ALLOWED_PRIVATE = {
    # Models as JSON for ``--json`` output; the converter is the one place that knows the wire.
    "fal_edit_async._converter": frozenset({"to_wire"}),
}
#: AsyncClient attributes that are becoming private: ``client.statistics()`` is the public view.
CLIENT_INTERNALS = frozenset({"transport", "stats", "uploader"})
#: Private attributes of the stdlib the CLI may use: the second Ctrl-C exits without cleanup.
ALLOWED_ATTRIBUTES = frozenset({("os", "_exit")})


def _modules() -> list[tuple[str, Path]]:
    """Every module of the CLI package, as (dotted name, file)."""
    found = []
    for path in sorted(CLI_DIR.rglob("*.py")):
        parts = path.relative_to(CLI_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join((CLI, *parts)), path))
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _check_from(target: str, names: list[str]) -> Iterator[str]:
    """The names of ``from target import names`` that the CLI may not import."""
    if not _inside(target, PACKAGE) or _inside(target, CLI):
        return
    allowed = PUBLIC.get(target) or ALLOWED_PRIVATE.get(target) or frozenset()
    for name in names:
        if name not in allowed:
            yield f"from {target} import {name}"


def import_offenders(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Each import in ``source`` (the code of ``module``) that is not allowed, as a statement."""
    package = module if is_package else module.rpartition(".")[0]
    offenders = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _inside(alias.name, PACKAGE) and not _inside(alias.name, CLI):
                    offenders.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            target = importlib.util.resolve_name(relative, package)
            found = _check_from(target, [alias.name for alias in node.names])
            offenders.extend(f"line {node.lineno}: {text}" for text in found)
    return offenders


def attribute_offenders(source: str) -> list[str]:
    """Each use of a private attribute (other than one's own) or of a client internal."""
    offenders = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value.id if isinstance(node.value, ast.Name) else None
        if owner in ("self", "cls") or (owner, node.attr) in ALLOWED_ATTRIBUTES:
            continue
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        if private or node.attr in CLIENT_INTERNALS:
            offenders.append(f"line {node.lineno}: {ast.unparse(node)}")
    return offenders


def _report(kind: str, offenders: dict[str, list[str]]) -> str:
    lines = [f"{name}: {text}" for name, found in offenders.items() for text in found]
    return f"the CLI uses {kind} outside the public API:\n  " + "\n  ".join(lines)


def test_every_cli_module_is_checked() -> None:
    """The walk finds the package and each of its modules (so an empty walk cannot pass)."""
    names = [name for name, _ in _modules()]

    assert {CLI, f"{CLI}._inputs", f"{CLI}._run", f"{CLI}._report"} <= set(names)


def test_cli_imports_only_public_names() -> None:
    """No module of the CLI imports a private name of the library, even under TYPE_CHECKING."""
    offenders = {}
    for name, path in _modules():
        found = import_offenders(path.read_text(), name, is_package=path.name == "__init__.py")
        if found:
            offenders[name] = found

    assert {} == offenders, _report("imports", offenders)


def test_cli_uses_no_private_attributes() -> None:
    """No module of the CLI reads another object's private attributes or the client's internals."""
    offenders = {}
    for name, path in _modules():
        found = attribute_offenders(path.read_text())
        if found:
            offenders[name] = found

    assert {} == offenders, _report("attributes", offenders)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("import json\nimport rich.console", [], id="stdlib-and-third-party"),
        pytest.param("from .. import AsyncClient, estimate_cost", [], id="public-relative"),
        pytest.param("from fal_edit_async import Batch", [], id="public-absolute"),
        pytest.param("from ..emulator import Emulator", [], id="public-emulator"),
        pytest.param("from ._report import Progress\nfrom . import _jobs", [], id="siblings"),
        pytest.param("from .._converter import to_wire", [], id="allow-listed"),
        pytest.param(
            "from .._client import AsyncClient",
            ["line 1: from fal_edit_async._client import AsyncClient"],
            id="private-module",
        ),
        pytest.param(
            "from .. import _models",
            ["line 1: from fal_edit_async import _models"],
            id="private-module-as-name",
        ),
        pytest.param(
            "from .._converter import converter",
            ["line 1: from fal_edit_async._converter import converter"],
            id="beyond-the-allow-list",
        ),
        pytest.param(
            "from ..emulator._state import Counters",
            ["line 1: from fal_edit_async.emulator._state import Counters"],
            id="private-emulator-module",
        ),
        pytest.param(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .._job import JobHandle",
            ["line 3: from fal_edit_async._job import JobHandle"],
            id="type-checking",
        ),
        pytest.param(
            "def f():\n    from .._exceptions import field_errors_of",
            ["line 2: from fal_edit_async._exceptions import field_errors_of"],
            id="inside-a-function",
        ),
        pytest.param(
            "import fal_edit_async._batch",
            ["import fal_edit_async._batch"],
            id="plain-import",
        ),
    ],
)
def test_import_check_tells_public_from_private(source: str, expected: list[str]) -> None:
    """The import check accepts public and allow-listed names and names every other import."""
    assert expected == import_offenders(source, f"{CLI}._run")


def test_relative_imports_resolve_from_the_package_init() -> None:
    """In the package init, ``from . import`` is a sibling and ``from .. import`` the library."""
    source = "from . import _jobs\nfrom .. import _client"

    assert ["line 2: from fal_edit_async import _client"] == import_offenders(
        source, CLI, is_package=True
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("self._live.stop()\nos._exit(130)", [], id="own-and-allowed"),
        pytest.param("client.statistics()", [], id="public-method"),
        pytest.param("client._core", ["line 1: client._core"], id="private"),
        pytest.param("client.transport.scrub(url)", ["line 1: client.transport"], id="internal"),
        pytest.param("n = client.stats['submits']", ["line 1: client.stats"], id="stats"),
    ],
)
def test_attribute_check_names_private_reads(source: str, expected: list[str]) -> None:
    """The attribute check allows one's own private state and names reads of anyone else's."""
    assert expected == attribute_offenders(source)
