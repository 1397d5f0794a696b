"""ProgressBar: an on_event callback that counts items and drives tqdm, rich or plain text."""

from __future__ import annotations

import builtins
import io
from typing import Any

import pytest

from fal_edit_async import (
    AsyncClient,
    EditImageInput,
    InputError,
    ItemCompleted,
    ItemFailed,
    ItemInterrupted,
    ItemSubmitted,
    ProgressBar,
)

from .conftest import client_for


def events() -> list[Any]:
    """Three items: one completes, one fails after completing (its download), one is cut."""
    return [
        ItemSubmitted(key="a", request_id="ra"),
        ItemSubmitted(key="b", request_id="rb"),
        ItemSubmitted(key="c", request_id="rc"),
        ItemCompleted(key="a", request_id="ra"),
        ItemCompleted(key="b", request_id="rb"),
        ItemFailed(key="b", request_id="rb", error=InputError("x", 1, "y")),
        ItemInterrupted(key="c", request_id="rc", cancel=None),
    ]


@pytest.mark.parametrize("kind", ["rich", "tqdm", "text"])
def test_counts_and_draws(kind: str) -> None:
    """Each kind draws to its file; counts: done 3 = ok 1 + failed 1 + interrupted 1."""
    out = io.StringIO()
    bar = ProgressBar(total=3, kind=kind, file=out)  # type: ignore[arg-type]
    for event in events():
        bar(event)
    assert (3, 1, 1, 1) == (
        bar.done,
        bar.count("ok"),
        bar.count("failed"),
        bar.count("interrupted"),
    )
    assert kind == bar.kind
    assert "ok=1 failed=1 interrupted=1 running=0" in out.getvalue()
    bar.close()


def test_auto_prefers_tqdm_then_rich_then_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optional dependencies stay optional: with neither importable, plain text."""
    real_import = builtins.__import__
    hidden: set[str] = set()

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.partition(".")[0] in hidden:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert "tqdm" == ProgressBar(file=io.StringIO()).kind
    hidden.add("tqdm")
    assert "rich" == ProgressBar(file=io.StringIO()).kind
    hidden.add("rich")
    assert "text" == ProgressBar(file=io.StringIO()).kind
    with pytest.raises(ImportError):
        ProgressBar(kind="rich")


def test_an_unknown_kind_is_refused() -> None:
    """kind= names one of the displays."""
    with pytest.raises(ValueError, match="kind"):
        ProgressBar(kind="fancy")  # type: ignore[arg-type]


async def test_drives_a_real_batch(emulator: Any, png_data_uri: str) -> None:
    """As on_event of edit_many, it ends with every item done and closes itself."""
    out = io.StringIO()
    inputs = [EditImageInput(prompt=f"p{i}", image_urls=[png_data_uri]) for i in range(3)]
    bar = ProgressBar(total=3, kind="rich", file=out)
    fal: AsyncClient
    async with client_for(emulator) as fal, fal.edit_many(inputs, on_event=bar) as batch:
        results = [r async for r in batch]
    assert 3 == len(results) == bar.done == bar.count("ok")
    assert bar._closed
    assert "ok=3 failed=0 running=0" in out.getvalue()
