"""Every Python block in README.md and docs/*.md runs, against the emulator.

Each block runs as its own script in a fresh interpreter, in a temporary folder holding the
shipped ``examples/``, with ``FAL_KEY``, ``FAL_QUEUE_URL`` and ``FAL_REST_URL`` pointing at an
emulator on loopback: what a reader copies is what runs. A block marked
``<!-- notebook: why -->`` runs as a Jupyter cell does (top-level ``await``, inside a running
event loop). A block that cannot run is marked ``<!-- not run: why -->``; the reason is
required.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from .test_cli_support import emulator_thread

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: A fenced python block, and the HTML comment just before it, if any.
BLOCK = re.compile(
    r"(?:<!--\s*(?P<mark>[a-z ]+):\s*(?P<why>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```",
    re.DOTALL,
)
MARKS = {"notebook", "not run"}

#: How a notebook cell runs: compiled with top-level await and awaited in a running loop.
CELL_RUNNER = """\
import ast, asyncio, sys
source = open(sys.argv[1], encoding="utf-8").read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
async def cell():
    result = eval(code, {"__name__": "__main__"})
    if result is not None:
        await result
asyncio.run(cell())
"""


@attrs.frozen
class Block:
    """One python block of a document."""

    document: str
    line: int
    code: str
    mark: str | None
    why: str | None


def blocks() -> Iterator[Block]:
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            mark = match["mark"]
            yield Block(path.name, line, match["code"], mark, match["why"])


BLOCKS = list(blocks())


def test_the_documents_have_blocks() -> None:
    """The extraction finds the README's blocks (a broken pattern would test nothing)."""
    assert 8 <= sum(b.document == "README.md" for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.document}:{b.line}")
def test_marks_say_why(block: Block) -> None:
    """A mark is one of the known ones and gives its reason."""
    if block.mark is not None:
        assert block.mark in MARKS
        assert block.why


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the shipped sample images, as the README's examples expect."""
    folder = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "examples", folder / "examples")
    return folder


RUNNABLE = [b for b in BLOCKS if b.mark != "not run"]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: f"{b.document}:{b.line}")
def test_block_runs(block: Block, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block runs to the end, against the emulator, without an error or a warning."""
    folder = workdir / f"{Path(block.document).stem}-{block.line}"
    shutil.copytree(workdir / "examples", folder / "examples")
    script = folder / "block.py"
    script.write_text(block.code, encoding="utf-8")
    with emulator_thread(monkeypatch):
        command = [sys.executable, "-W", "error::DeprecationWarning"]
        if block.mark == "notebook":
            command += ["-c", CELL_RUNNER, str(script)]
        else:
            command += [str(script)]
        done = subprocess.run(
            command,
            cwd=folder,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert 0 == done.returncode, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
