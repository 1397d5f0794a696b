"""Every output has one owner: names claimed once, in any script, never over a file the batch
does not own, in a folder proven writable before anything is paid."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fal_edit_async import AsyncClient, EditImageInput, EditItem, InputError, RetryPolicy
from fal_edit_async.emulator import Emulator

from .conftest import client_for, make_png


def named(name: str, uri: str, n: int = 1) -> EditItem:
    """An item called ``name`` (as the CLI names items after their files)."""
    return EditItem(
        input=EditImageInput(prompt=f"p {name}", image_urls=[uri], num_images=n), name=name
    )


async def files_of(
    client: AsyncClient,
    items: list[EditItem],
    out: Path,
    name_template: str = "{stem}_{n}.{ext}",
) -> list[Path]:
    """Run the batch; every file each item reports."""
    async with client.edit_many(items, download_to=out, name_template=name_template) as batch:
        results = [r async for r in batch]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return [f.path for r in results for f in r.files]


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["写真1", "画像1", "照片1", "图片1"], id="cjk-stays-readable"),
        pytest.param(["x" * 100 + "a", "x" * 100 + "b", "x" * 100 + "c"], id="same-first-100"),
        pytest.param(["a b", "a?b", "a_b"], id="clean-to-the-same"),
        pytest.param(["CON", "con", "Con"], id="reserved-device-names"),
    ],
)
async def test_names_that_clean_alike_still_get_one_file_each(
    client: AsyncClient, png_data_uri: str, tmp_path: Path, names: list[str]
) -> None:
    """Names are made unique after cleaning and cutting, so N items give N files."""
    paths = await files_of(client, [named(n, png_data_uri) for n in names], tmp_path)

    assert len(names) == len(set(paths)) == len(list(tmp_path.iterdir()))


async def test_non_ascii_names_stay_readable(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """写真1 stays 写真1 on disk."""
    (path,) = await files_of(client, [named("写真1", png_data_uri)], tmp_path)
    assert "写真1_0.png" == path.name


async def test_files_already_in_the_folder_are_never_replaced(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """shot.png and shot_1.png are inputs in the output folder: the original shot_1.png stays."""
    original = make_png(color=(1, 2, 3))
    (tmp_path / "shot.png").write_bytes(original)
    (tmp_path / "shot_0.png").write_bytes(original)  # another run's output, or an input

    paths = await files_of(client, [named("shot", png_data_uri)], tmp_path)

    assert original == (tmp_path / "shot_0.png").read_bytes()
    assert [tmp_path / "shot-2_0.png"] == paths


async def test_overwrite_lets_outputs_replace_files_there(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """With overwrite=True the batch writes its usual names over what is there."""
    (tmp_path / "shot_0.png").write_bytes(b"old")
    async with client.edit_many(
        [named("shot", png_data_uri)], download_to=tmp_path, overwrite=True
    ) as batch:
        (result,) = [r async for r in batch]
    assert [tmp_path / "shot_0.png"] == [f.path for f in result.files]
    assert b"old" != (tmp_path / "shot_0.png").read_bytes()


async def test_an_unwritable_folder_is_refused_before_anything_is_paid(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """A file where the output folder should be: InputError at the call, no submit."""
    (tmp_path / "out").write_text("a file")
    with pytest.raises(InputError, match="download_to"):
        await files_of(client, [named("a", png_data_uri)], tmp_path / "out" / "x")
    assert 0 == emulator.counters.submits


async def test_a_rerun_into_the_same_folder_without_a_journal_keeps_both(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """Without a journal a rerun owns nothing there: its files go beside the first run's."""
    first = await files_of(client, [named("a", png_data_uri)], tmp_path)
    second = await files_of(client, [named("a", png_data_uri)], tmp_path)
    assert first != second and all(p.exists() for p in first + second)


_NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=120
)


#: Templates that put the stem, the index, the key and the request id in different places, or
#: leave them out (then only the collision suffix keeps names apart).
_TEMPLATES = [
    "{stem}_{n}.{ext}",
    "{n}.{ext}",
    "{key}-{n:02}.{ext}",
    "{request_id}_{n}.{ext}",
    "edit {n} of {stem}.{ext}",
    "{stem}.{ext}",
    "same.{ext}",
]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(_NAMES, min_size=1, max_size=6),
    images=st.integers(1, 3),
    existing=st.lists(_NAMES, max_size=3),
    template=st.sampled_from(_TEMPLATES),
    upper=st.booleans(),
)
def test_n_items_of_k_images_give_n_times_k_files_and_touch_nothing_else(
    tmp_path_factory: pytest.TempPathFactory,
    names: list[str],
    images: int,
    existing: list[str],
    template: str,
    upper: bool,
) -> None:
    """Any names, any duplicates, any template, files already there (in another case too):
    N*k distinct files inside the folder, and every file that was there before is byte for
    byte as it was."""
    if "{n" not in template:
        images = 1
    out = tmp_path_factory.mktemp("out")
    before = {}
    for i, name in enumerate(existing):
        base = f"{(name or 'x').replace('/', '_').lstrip('.')[:60] or 'x'}_{i}"
        path = out / f"{base.upper() if upper else base}.png"
        try:
            path.write_bytes(b"theirs %d" % i)
        except OSError:
            continue
        before[path] = path.read_bytes()
    uri = "data:image/png;base64," + __import__("base64").b64encode(make_png()).decode()

    async def scenario() -> list[Path]:
        async with Emulator(fast_images=True) as emu, client_for(emu) as client:
            items = [named(n, uri, images) for n in names]
            return await files_of(client, items, out, template)

    paths = anyio.run(scenario)

    assert len(names) * images == len({p.name.casefold() for p in paths})
    assert all(p.parent == out for p in paths)
    assert all(path.read_bytes() == data for path, data in before.items())


async def test_a_half_downloaded_item_is_finished_under_its_own_name(
    emulator: Emulator, png_data_uri: str, tmp_path: Path
) -> None:
    """An image fails to download; the journaled rerun finishes the item under the name it
    claimed, and leaves no second set of files."""
    journal, items, out = tmp_path / "j", [named("a", png_data_uri, 2)], tmp_path / "out"
    emulator.schedule_fault("download", "truncated_download", times=1)
    async with client_for(emulator, retry=RetryPolicy(wait=False, max_attempts=1)) as client:
        async with client.edit_many(items, download_to=out, journal=journal) as batch:
            (first,) = [r async for r in batch]
    assert not first.ok
    assert 1 == len(list(out.iterdir()))  # one of the two made it

    async with client_for(emulator) as client:
        async with client.edit_many(items, download_to=out, journal=journal) as batch:
            (again,) = [r async for r in batch]

    assert again.ok
    assert {"a_0.png", "a_1.png"} == {f.path.name for f in again.files}
    assert {"a_0.png", "a_1.png"} == {p.name for p in out.iterdir()}


async def test_a_whole_image_put_where_a_journaled_output_was_is_never_replaced(
    client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    """The journal says ``a_0.png`` is this item's, but the image there now is another one
    (the output was deleted and another run wrote that name, or it was edited): a rerun
    keeps it and writes the item's output as ``a-2_0.png``. A broken file is repaired in place
    (tests/test_journal.py), since it can be no one's image."""
    journal, out = tmp_path / "j", tmp_path / "out"
    async with client.edit_many([named("a", png_data_uri)], download_to=out, journal=journal) as b:
        (first,) = [r async for r in b]
    theirs = make_png(color=(7, 8, 9))
    first.files[0].path.write_bytes(theirs)

    async with client.edit_many([named("a", png_data_uri)], download_to=out, journal=journal) as b:
        (again,) = [r async for r in b]

    assert again.ok and again.resumed
    assert theirs == (out / "a_0.png").read_bytes()
    assert [out / "a-2_0.png"] == [f.path for f in again.files]
