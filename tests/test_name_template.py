"""Output names from a template: checked before anything is paid, safe and unique whatever
the values, and followed by the batch and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from fal_edit_async import (
    DEFAULT_NAME_TEMPLATE,
    AsyncClient,
    EditImageInput,
    EditItem,
    InputError,
    ItemState,
    NameTemplate,
)
from fal_edit_async._cli import main
from fal_edit_async._files import safe_stem
from fal_edit_async._name_template import claim_number
from fal_edit_async.emulator import Emulator

from .test_cli_support import emulator_thread, json_lines, write_images

PROMPT = "Make this pixel-art style."


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        pytest.param("{stem}_{n}", "ending in '.{ext}'", id="no-extension"),
        pytest.param("{stem}_{n}.png", "ending in '.{ext}'", id="fixed-extension"),
        pytest.param("../{stem}_{n}.{ext}", "no /", id="path-separator"),
        pytest.param("a\\{n}.{ext}", "no /", id="backslash"),
        pytest.param("{stem}:{n}.{ext}", "no /", id="colon"),
        pytest.param(".{stem}_{n}.{ext}", "dot", id="hidden-file"),
        pytest.param("{name}_{n}.{ext}", "fields among", id="unknown-field"),
        pytest.param("{ext}_{n}.{ext}", "fields among", id="ext-twice"),
        pytest.param("{n}_{n}.{ext}", "at most once", id="repeated-field"),
        pytest.param("{stem!r}_{n}.{ext}", "no conversions", id="conversion"),
        pytest.param("{stem:>9}_{n}.{ext}", "format only on {n}", id="stem-format"),
        pytest.param("{n:099}.{ext}", "at most 8 wide", id="huge-n"),
        pytest.param("{n:q}.{ext}", "zero-padding and width only", id="bad-format"),
        pytest.param("{n:/>2}.{ext}", "zero-padding and width only", id="slash-fill"),
        pytest.param("{n:c}.{ext}", "zero-padding and width only", id="char-type"),
        pytest.param("{stem_{n}.{ext}", "valid template", id="unbalanced"),
        pytest.param(".{ext}", "a name before", id="empty"),
        pytest.param("x" * 41 + "{n}.{ext}", "40 bytes", id="long-literal"),
        pytest.param(7, "a name template", id="not-text"),
    ],
)
def test_bad_templates_are_input_errors(template: object, complaint: str) -> None:
    """Each bad template says what is wrong with it."""
    with pytest.raises(InputError, match="name_template") as caught:
        NameTemplate.parse(template)
    assert complaint in caught.value.allowed


def test_the_default_template_gives_todays_names() -> None:
    """``{stem}_{n}`` with ``-2`` on the stem for a collision, as before templates existed."""
    names = NameTemplate.parse(DEFAULT_NAME_TEMPLATE)
    assert ["photo_0", "photo_1"] == names.bases(
        stem="photo", claim=1, count=2, key="k", request_id="r"
    )
    assert "photo-2_0" == names.base(stem="photo", claim=2, n=0, key="k", request_id="r")


def test_fields_and_formats_render() -> None:
    """Key, request id and a formatted index land where the template puts them."""
    names = NameTemplate.parse("{key}-{request_id}-{n:03}.{ext}")
    assert "a_b-req_1-007" == names.base(stem="s", claim=1, n=7, key="a/b", request_id="req:1")
    # Without {stem}, a collision's suffix goes at the end.
    assert "a_b-req_1-007-3" == names.base(stem="s", claim=3, n=7, key="a/b", request_id="req:1")


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@given(
    stem=_TEXT,
    key=_TEXT,
    request_id=_TEXT,
    claim=st.integers(1, 10_000),
    template=st.sampled_from(
        ["{stem}_{n}.{ext}", "{key}{request_id}{stem}{n}.{ext}", "{request_id}.{ext}"]
    ),
)
def test_any_values_render_a_safe_short_name(
    stem: str, key: str, request_id: str, claim: int, template: str
) -> None:
    """Whatever the values (hostile request ids included), a name stays in its folder, fits
    in 200 bytes, is its own safe stem, and each claim gives a different name."""
    names = NameTemplate.parse(template)
    safe = safe_stem(stem)
    base = names.base(stem=safe, claim=claim, n=3, key=key, request_id=request_id)
    other = names.base(stem=safe, claim=claim + 1, n=3, key=key, request_id=request_id)

    assert "/" not in base and "\\" not in base and "\x00" not in base
    assert not base.startswith(".")
    assert len(base.encode()) <= 200
    assert base != other


@given(stem=_TEXT.map(safe_stem), claim=st.integers(1, 10_000))
def test_a_recorded_claim_gives_back_its_number(stem: str, claim: int) -> None:
    """The journal keeps the claimed stem; its number comes back from it, so a resumed item
    renders the very names it claimed."""
    from fal_edit_async._files import numbered_stem

    assert claim == claim_number(numbered_stem(stem, claim), stem)


def test_a_claim_of_another_stem_is_not_taken() -> None:
    """``photo-2`` is not a claim of ``shot``: a stale row never renames another input."""
    assert claim_number("photo-2", "shot") is None
    assert claim_number("shot-x", "shot") is None


def item(name: str, uri: str, n: int = 1) -> EditItem:
    return EditItem(
        input=EditImageInput(prompt=f"p {name}", image_urls=[uri], num_images=n), name=name
    )


async def test_a_batch_names_files_by_the_template(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Each file is named as the template says, with the request id that made it."""
    async with client.edit_many(
        [item("cat", png_data_uri, 2)],
        download_to=tmp_path,
        name_template="{stem}.{request_id}.{n:02}.{ext}",
    ) as batch:
        (result,) = [r async for r in batch]
    assert result.ok
    expected = {f"cat.{result.request_id}.00.png", f"cat.{result.request_id}.01.png"}
    assert expected == {p.name for p in tmp_path.iterdir()}


async def test_a_template_that_collides_gets_suffixes_never_overwrites(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """``same.{ext}`` for three items and a file already there: four files, the old one kept."""
    (tmp_path / "SAME.png").write_bytes(b"theirs")
    items = [item(n, png_data_uri) for n in ("a", "b", "c")]
    async with client.edit_many(items, download_to=tmp_path, name_template="same.{ext}") as b:
        results = [r async for r in b]
    assert all(r.ok for r in results)
    assert b"theirs" == (tmp_path / "SAME.png").read_bytes()
    assert {"SAME.png", "same-2.png", "same-3.png", "same-4.png"} == {
        p.name for p in tmp_path.iterdir()
    }


async def test_several_images_without_n_fail_before_anything_is_paid(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Two images cannot share ``{stem}.{ext}``: that item fails unsent, the other runs."""
    items = [item("two", png_data_uri, 2), item("one", png_data_uri, 1)]
    async with client.edit_many(items, download_to=tmp_path, name_template="{stem}.{ext}") as b:
        results = {r.key: r for r in [r async for r in b]}

    assert ItemState.FAILED == results["two"].state
    assert isinstance(results["two"].error, InputError)
    assert results["one"].ok
    assert 1 == emulator.counters.submits
    assert ["one.png"] == [p.name for p in tmp_path.iterdir()]


async def test_a_bad_template_raises_at_the_call(client: AsyncClient, tmp_path: Path) -> None:
    """Checked with the other settings: nothing is sent."""
    with pytest.raises(InputError, match="name_template"):
        client.edit_many([], download_to=tmp_path, name_template="../{n}.{ext}")
    assert 0 == client.statistics().requests


def test_cli_name_names_the_files_and_says_which_input_became_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--name`` reaches the batch; the JSON line maps the input to the files."""
    [shot] = write_images(tmp_path / "in", "shot.png")
    out = tmp_path / "out"
    with emulator_thread(monkeypatch):
        argv = ["edit", PROMPT, str(shot), "--out", str(out), "--name", "v2-{stem}-{n}.{ext}"]
        assert 0 == main([*argv, "--json"])
    [record] = json_lines(capsys.readouterr().out)
    assert ["v2-shot-0.png"] == [p.name for p in out.iterdir()]
    assert [str(shot)] == [str(Path(s)) for s in record["sources"]]
    assert ["v2-shot-0.png"] == [Path(o).name for o in record["outputs"]]


def test_cli_bad_name_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A template with a path in it: exit 2, nothing submitted, the reason shown."""
    [shot] = write_images(tmp_path / "in", "shot.png")
    with emulator_thread(monkeypatch) as (_, emu):
        argv = ["edit", PROMPT, str(shot), "--out", str(tmp_path / "o"), "--name", "a/{n}.{ext}"]
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert 2 == exited.value.code
        assert 0 == emu.counters.submits
    assert "--name" in capsys.readouterr().err
