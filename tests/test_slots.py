"""Slots: the batch pipeline's limiter. FIFO, a free slot taken without suspending, and no
slot lost or duplicated when a waiter is cancelled, whenever that happens."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from hypothesis import given, settings, strategies as st

from fal_edit_async._slots import Slots


async def test_a_free_slot_is_taken_without_suspending() -> None:
    """No loop step when a slot is free: the task that took it runs on uninterrupted."""
    slots = Slots(2)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.get_running_loop().create_task(other())
    await slots.acquire()
    ran.append("acquired")  # before `other` ran: acquire() did not yield to the loop
    await task
    assert ["acquired", "other"] == ran
    assert 1 == slots.used


async def test_waiters_are_served_first_come_first_served() -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[int] = []

    async def waiter(n: int, started: anyio.Event) -> None:
        started.set()
        async with slots:
            order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(5):
            started = anyio.Event()
            tg.start_soon(waiter, n, started)
            await started.wait()
        slots.release()
    assert [0, 1, 2, 3, 4] == order
    assert 0 == slots.used


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    slots = Slots(1)
    await slots.acquire()
    with anyio.move_on_after(0):
        await slots.acquire()
    slots.release()
    assert 0 == slots.used
    await slots.acquire()  # the slot given back is free: no ghost waiter took it
    assert 1 == slots.used


async def test_a_slot_granted_to_a_task_cancelled_before_it_resumed_is_handed_on() -> None:
    """release() grants the slot to the first waiter; that waiter is cancelled before it
    runs again: the slot must pass to the next waiter, not vanish."""
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []

    async def take(name: str) -> None:
        async with slots:
            got.append(name)

    loop = asyncio.get_running_loop()
    first = loop.create_task(take("first"))
    second = loop.create_task(take("second"))
    await asyncio.sleep(0)  # both wait now
    slots.release()  # granted to `first`, which has not resumed yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert ["second"] == got
    assert 0 == slots.used


async def test_lowering_the_total_holds_new_takers_until_enough_come_back() -> None:
    slots = Slots(3)
    for _ in range(3):
        await slots.acquire()
    slots.total = 1
    slots.release()
    slots.release()
    with anyio.move_on_after(0) as scope:
        await slots.acquire()  # 1 held of a total of 1: waits
    assert scope.cancelled_caught
    slots.total = 2  # raising it wakes a waiter
    await slots.acquire()
    assert 2 == slots.used


def test_bad_totals_and_a_release_too_many_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
    slots = Slots(1)
    with pytest.raises(ValueError, match="at least 1"):
        slots.total = 0
    with pytest.raises(RuntimeError, match="without a slot"):
        slots.release()


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(1, 4),
    plan=st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=12),
)
def test_never_more_holders_than_the_total_and_none_lost(
    total: int, plan: list[tuple[bool, int]]
) -> None:
    """Tasks take a slot, hold it a few loop steps, some are cancelled at a random step:
    at no point do more than ``total`` hold one, and at the end every slot is back."""

    async def main() -> None:
        slots = Slots(total)
        holding = 0
        peak = 0

        async def worker(steps: int) -> None:
            nonlocal holding, peak
            async with slots:
                holding += 1
                peak = max(peak, holding)
                try:
                    for _ in range(steps):
                        await asyncio.sleep(0)
                finally:
                    holding -= 1

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(worker(steps)) for _, steps in plan]
        for (cancel, steps), task in zip(plan, tasks, strict=True):
            for _ in range(steps):
                await asyncio.sleep(0)
            if cancel:
                task.cancel()
        # A deadlock guard, not a synchronisation: a lost slot would hang here for ever.
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
        assert peak <= total
        assert 0 == slots.used
        await slots.acquire()  # and the limiter still works

    asyncio.run(main())
