"""The package's shape, checked: each module imports only from its own layer or below.

Layers, bottom up (``docs/architecture.md`` draws them): values and pure functions; HTTP; the
core; operations over a core; the batch subsystem; the façade; the application. The import
graph is read from the source (the AST), ``TYPE_CHECKING`` imports and function-local ones
included, so a back-edge cannot hide. The emulator is independent of the client.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import fal_edit_async

ROOT = Path(fal_edit_async.__file__).parent
PACKAGE = "fal_edit_async"

#: Each top-level module (or subpackage) of the client, with its layer.
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        (
            "_version",
            "_exceptions",
            "_models",
            "_statistics",
            "_config",
            "_converter",
            "_endpoint",
            "_pricing",
            "_sse",
            "_protocol",
            "_files",
            "_name_template",
            "_webhook_models",
            "_reconcile_models",
        ),
        0,
    ),
    "_transport": 1,
    "_retry": 1,
    "_slots": 1,
    "_tls": 1,
    "_logging": 0,
    "_core": 2,
    **dict.fromkeys(("_uploads", "_downloads", "_status_stream", "_job", "_history"), 3),
    # The webhook receiver: a server of its own (aiohttp.web), over layer-0 values only.
    "webhooks": 3,
    "_batch": 4,
    **dict.fromkeys(("_client", "_sync_client", "_progress"), 5),
    **dict.fromkeys(("_cli", "__init__", "__main__"), 6),
}


def _modules() -> Iterator[tuple[str, Path]]:
    """Every module of the package as (dotted name, file), the emulator included."""
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join((PACKAGE, *parts)), path


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in the file, names of ``from`` included."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:  # ``from . import _job`` imports a module by name
                yield node.lineno, f"{base}.{alias.name}"


def _unit(module: str) -> str | None:
    """The top-level unit of the client a module belongs to (None outside the client)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return "__init__"
    return None if parts[1] == "emulator" else parts[1]


def _edges() -> Iterator[tuple[str, int, str]]:
    for module, path in _modules():
        for line, target in _imports(module, path):
            yield f"{module}:{line}", _unit(module) or module, target


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in a layer before it can land."""
    units = {_unit(m) for m, _ in _modules()} - {None}
    assert set() == units - set(LAYERS)


def test_no_module_imports_a_higher_layer() -> None:
    """Imports point down (or across one layer), never up: no back-edges, not even for types."""
    offenders = []
    for where, unit, target in _edges():
        low, high = LAYERS.get(unit), LAYERS.get(_unit(target) or "")
        if low is not None and high is not None and high > low:
            offenders.append(f"{where} imports {target} (layer {high} > {low})")
    assert [] == offenders


def test_only_the_transport_imports_aiohttp() -> None:
    """aiohttp is the transport's business: one client module imports it (the emulator and
    the webhook receiver, servers of their own, aside)."""
    importers = {
        where.partition(":")[0]
        for where, unit, target in _edges()
        if target.split(".")[0] == "aiohttp"
        and not unit.startswith(f"{PACKAGE}.emulator")
        and unit != "webhooks"
    }
    assert {f"{PACKAGE}._transport"} == importers


def test_the_emulator_is_independent_of_the_client() -> None:
    """The emulator judges the client, so it imports nothing of it."""
    offenders = [
        f"{where} imports {target}"
        for where, unit, target in _edges()
        if unit.startswith(f"{PACKAGE}.emulator")
        and target.startswith(PACKAGE)
        and not target.startswith(f"{PACKAGE}.emulator")
    ]
    assert [] == offenders


def test_only_the_facade_refers_to_the_client() -> None:
    """Operations take the core: no module below the façade names ``AsyncClient`` in code."""
    users = set()
    for module, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        if "AsyncClient" in names and LAYERS.get(_unit(module) or "", 99) < LAYERS["_client"]:
            users.add(module)
    assert set() == users


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("from .._client import AsyncClient", True, id="relative-up"),
        pytest.param("from fal_edit_async import _client", True, id="module-by-name"),
        pytest.param(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .._client import X",
            True,
            id="type-checking",
        ),
        pytest.param("from .._models import JobUrls", False, id="down"),
    ],
)
def test_the_check_sees_back_edges(tmp_path: Path, source: str, expected: bool) -> None:
    """The layer check catches an upward import however it is written."""
    path = tmp_path / "_runner.py"
    path.write_text(source)
    targets = [t for _, t in _imports(f"{PACKAGE}._batch._runner", path)]
    found = any(LAYERS.get(_unit(t) or "", -1) > LAYERS["_batch"] for t in targets)
    assert expected == found
