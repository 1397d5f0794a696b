"""Attacks (round atk10) on a88d93b: a batch's consumer takes buffered results with
``receive_nowait`` and ``_feed``'s ``deliver`` puts them in with ``send_nowait``.

Two breaks were found, and fixed (each test below failed before its fix, and passes on
a88d93b~1 too):

- ``deliver`` did not checkpoint before sending. When the ``async with`` block is left,
  ``edit_many`` cancels the task group and closes the receive stream (``batch._end()``) in one
  step; an item task whose last await had already completed is not cancelled by anyio (its
  waiter is done) and ran on, uncancelled, into ``send_nowait``, which raised
  ``BrokenResourceError``: a ``break`` raised, a consumer's own exception came wrapped, and
  the CLI stopped by SIGINT or SIGTERM said "internal error" and exited 1. Now ``deliver``
  checks for cancellation first (without yielding when there is none), and a stream closed
  meanwhile drops the result.
- ``receive_nowait`` also takes the items of senders waiting on a full buffer, so a consumer
  whose task was cancelled was handed buffer + waiting senders (up to ``2 * concurrency +
  uploads + downloads``) results before it reached an await. Now each result is taken after
  a check for cancellation.

The other tests are guarantees that held.
"""

from __future__ import annotations

import itertools
import signal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fal_edit_async import AsyncClient, BatchEvent, ItemCompleted, ItemResult
from fal_edit_async.emulator import Emulator

from ._cli_runs import cli_env, edit_command
from .conftest import make_png
from .test_cli_support import json_lines

_prompts = itertools.count()


def item(uri: str, n: int | None = None) -> dict[str, Any]:
    """A manifest-style item, unique across the whole file (one emulator per test)."""
    return {"prompt": f"atk10 #{next(_prompts) if n is None else n}", "image_urls": [uri]}


class _Gate:
    """An on_event callback holding item ``key``'s ItemCompleted until released."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.waiting = anyio.Event()
        self.open = anyio.Event()

    async def __call__(self, event: BatchEvent) -> None:
        if isinstance(event, ItemCompleted) and event.key == self.key:
            self.waiting.set()
            await self.open.wait()


def _two(uri: str) -> list[tuple[str, dict[str, Any]]]:
    return [("a", item(uri)), ("b", item(uri))]


async def test_breaking_out_as_an_item_finishes_leaves_the_block_cleanly(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """Item b's last await is done (its task ready, not yet run) when the consumer breaks."""
    gate = _Gate("b")
    seen = []
    async with client.edit_many(_two(png_data_uri), concurrency=2, on_event=gate) as batch:
        async for result in batch:
            seen.append(result.key)
            await gate.waiting.wait()
            gate.open.set()
            break
    assert ["a"] == seen


async def test_a_consumers_exception_leaves_the_block_as_it_is(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """The consumer raises as item b's task is ready. (anyio's task group wraps the host's
    exception in a group before and after the change: only the ValueError may be in it.)"""
    gate = _Gate("b")
    with pytest.raises(BaseExceptionGroup) as caught:
        async with client.edit_many(_two(png_data_uri), concurrency=2, on_event=gate) as batch:
            async for _ in batch:
                await gate.waiting.wait()
                gate.open.set()
                raise ValueError("consumer")
    assert caught.value.split(ValueError)[1] is None, caught.value


async def test_a_consumer_cancelled_from_outside_stops_quietly(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """Another task cancels a scope around the batch, then lets item b's task go. Held: the
    enclosing scope's cancel reaches b's task too (its wait was not done yet)."""
    gate = _Gate("b")

    async def cut(scope: anyio.CancelScope) -> None:
        await gate.waiting.wait()
        scope.cancel()
        gate.open.set()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            items = _two(png_data_uri)
            async with client.edit_many(items, concurrency=2, on_event=gate) as batch:
                async for _ in batch:
                    tg.start_soon(cut, scope)
                    await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert scope.cancelled_caught


async def test_a_cancelled_consumer_is_handed_at_most_concurrency_results(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """20 items at concurrency 2, nobody iterating: 2 results buffered, 14 senders waiting
    (pipeline = 2 jobs + 4 uploads + 8 downloads). Then the consumer's task is cancelled."""
    items = [item(png_data_uri) for _ in range(20)]
    got: list[ItemResult] = []
    async with client.edit_many(items, concurrency=2) as batch:
        await emulator.wait_until(lambda: emulator.counters.result_fetches >= 16)
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as scope:
            scope.cancel()
            async for result in batch:
                got.append(result)
    assert len(got) <= 2, len(got)


async def test_buffered_results_come_back_to_back_yet_all_arrive_once(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    """A consumer that looks only once everything waits (buffer full, senders parked):
    every item still yields exactly once, and the summary counts what was yielded."""
    items = [item(png_data_uri) for _ in range(12)]
    async with client.edit_many(items, concurrency=3) as batch:
        await emulator.wait_until(lambda: emulator.counters.result_fetches >= 12)
        await anyio.wait_all_tasks_blocked()
        results = [r async for r in batch]
    assert 12 == len({r.index for r in results}) == len(results)
    summary = batch.summary()
    assert (12, 12, 0) == (summary.total, summary.completed, summary.interrupted)
    assert max(emulator.counters.billed_by_input.values()) == 1


async def test_iterating_after_the_block_raises(
    emulator: Emulator, client: AsyncClient, png_data_uri: str
) -> None:
    async with client.edit_many([item(png_data_uri)], concurrency=1) as batch:
        pass
    with pytest.raises(RuntimeError, match="inside the block"):
        async for _ in batch:
            pass


Behaviour = tuple[str, int]
BEHAVIOURS = st.one_of(
    st.tuples(st.sampled_from(["drain", "slow"]), st.just(0)),
    st.tuples(st.sampled_from(["break", "raise", "cancel"]), st.integers(0, 6)),
    st.tuples(st.just("never"), st.just(0)),
)


async def _consume(client: AsyncClient, items: list[Any], c: int, how: Behaviour) -> Any:
    kind, k = how
    yielded: list[ItemResult] = []
    batch = None
    with anyio.CancelScope() as scope:
        try:
            async with client.edit_many(items, concurrency=c) as batch:
                if kind == "never":
                    await anyio.wait_all_tasks_blocked()
                else:
                    async for result in batch:
                        yielded.append(result)
                        if kind == "slow":
                            await anyio.wait_all_tasks_blocked()
                        if len(yielded) > k and kind == "break":
                            break
                        if len(yielded) > k and kind == "raise":
                            raise ValueError("consumer")
                        if len(yielded) > k and kind == "cancel":
                            scope.cancel()
                            await anyio.lowlevel.checkpoint()
        except ValueError:
            assert kind == "raise"
        except BaseExceptionGroup as exc:  # anyio's task group wraps the consumer's own
            assert kind == "raise" and exc.split(ValueError)[1] is None, exc
    return batch, yielded


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(n=st.integers(1, 8), c=st.integers(1, 4), how=BEHAVIOURS)
async def test_any_consumer_gets_each_item_once_and_fal_pays_once(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, n: int, c: int, how: Behaviour
) -> None:
    before = set(emulator.jobs)
    items = [item(png_data_uri) for _ in range(n)]
    with anyio.fail_after(20):
        batch, yielded = await _consume(client, items, c, how)
        new = [emulator.jobs[r] for r in set(emulator.jobs) - before]
        for job in new:  # nothing left running at fal
            await emulator.wait_for_state(job.request_id, "COMPLETED")
    indices = [r.index for r in yielded]
    assert len(indices) == len(set(indices)), indices
    assert max(emulator.counters.billed_by_input.values(), default=0) <= 1
    assert all(r.ok for r in yielded)
    if how[0] in ("drain", "slow"):
        assert sorted(indices) == list(range(n))
        summary = batch.summary()
        assert (n, n) == (summary.total, summary.completed)
    if how[0] == "break" and how[1] + 1 < n:
        assert len(yielded) == how[1] + 1


async def test_a_journal_rerun_after_an_early_break_pays_nothing_again(
    emulator: Emulator, client: AsyncClient, png_data_uri: str, tmp_path: Path
) -> None:
    items = [item(png_data_uri) for _ in range(10)]
    journal = tmp_path / "j"
    first: list[ItemResult] = []
    async with client.edit_many(items, concurrency=3, journal=journal) as batch:
        async for result in batch:
            first.append(result)
            if len(first) == 2:
                break
    with anyio.fail_after(20):
        for job in list(emulator.jobs.values()):
            await emulator.wait_for_state(job.request_id, "COMPLETED")
        async with client.edit_many(items, concurrency=3, journal=journal) as batch:
            second = [r async for r in batch]
    assert 10 == len(second) == len({r.index for r in second})
    assert all(r.ok for r in second)
    assert max(emulator.counters.billed_by_input.values()) == 1
    assert 10 == len(emulator.counters.billed_by_input)


# -- the CLI stopped by a signal at moments picked by what the emulator saw ---------------


@pytest.mark.parametrize(
    ("sig", "counter", "at"),
    [
        pytest.param(signal.SIGINT, "completed", 5, id="int-mid-completions"),
        pytest.param(signal.SIGTERM, "downloads", 8, id="term-mid-downloads"),
    ],
)
async def test_a_signalled_cli_run_exits_cleanly_and_its_rerun_finishes(
    emulator: Emulator, tmp_path: Path, sig: signal.Signals, counter: str, at: int
) -> None:
    n = 16
    (tmp_path / "in").mkdir()
    for i in range(n):
        (tmp_path / "in" / f"p{i}.png").write_bytes(make_png((24, 16), (i * 9, 40, 40)))
    env, command = cli_env(emulator), edit_command(tmp_path, "--concurrency", "4")
    with anyio.fail_after(60):
        process = await anyio.open_process(command, env=env)
        async with process:
            await emulator.wait_until(lambda: getattr(emulator.counters, counter) >= at)
            process.send_signal(sig)
            await process.wait()
            assert process.stderr is not None
            stderr = (await process.stderr.receive()).decode() if process.returncode else ""
        second = await anyio.run_process(command, env=env, check=False)
    assert "Traceback" not in stderr, stderr
    assert process.returncode in (0, 130, 143), (process.returncode, stderr)
    assert 0 == second.returncode, second.stderr.decode()
    records = json_lines(second.stdout.decode())
    assert n == len(records)
    assert {"completed"} == {r["status"] for r in records}
    assert max(emulator.counters.billed_by_input.values()) == 1
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert not [name for name in names if name.startswith(".")], names
    for i in range(n):
        assert any(name.startswith((f"p{i}_", f"p{i}-", f"p{i}.")) for name in names), names
