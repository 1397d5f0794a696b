"""The adaptive jobs limit: halve on a 429 burst, creep back, never past the configured cap."""

from __future__ import annotations

import anyio

from fal_edit_async._batch._adaptive import AdaptiveLimiter


async def test_one_cut_per_epoch() -> None:
    """A burst of 429s from slots of the same epoch halves the level once."""
    limiter = AdaptiveLimiter(16)
    async with limiter.slot() as epoch:
        for _ in range(10):
            limiter.rate_limited(epoch)
    assert (8, 1) == (limiter.level, limiter.decreases)


async def test_later_epochs_cut_again_down_to_one() -> None:
    """Each new epoch's 429 halves again, never below one."""
    limiter = AdaptiveLimiter(8)
    for _ in range(6):
        async with limiter.slot() as epoch:
            limiter.rate_limited(epoch)
    assert (1, 1) == (limiter.level, limiter.lowest)


async def test_additive_increase_up_to_the_cap() -> None:
    """Successes raise the level about one per round, and never above the limit."""
    limiter = AdaptiveLimiter(8)
    async with limiter.slot() as epoch:
        limiter.rate_limited(epoch)
    assert 4 == limiter.level
    for _ in range(5):
        limiter.succeeded()
    assert 5 == limiter.level
    for _ in range(1000):
        limiter.succeeded()
    assert 8 == limiter.level


async def test_lowered_level_holds_back_new_slots() -> None:
    """After a cut, new slots wait until the in-use count is under the new level."""
    limiter = AdaptiveLimiter(2)
    entered = 0

    async def take(release: anyio.Event) -> None:
        nonlocal entered
        async with limiter.slot():
            entered += 1
            await release.wait()

    first, second, third = anyio.Event(), anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, first)
        tg.start_soon(take, second)
        await anyio.wait_all_tasks_blocked()
        limiter.rate_limited(0)
        first.set()
        tg.start_soon(take, third)
        await anyio.wait_all_tasks_blocked()
        assert (2, 1) == (entered, limiter.in_use)
        second.set()
        await anyio.wait_all_tasks_blocked()
        assert 3 == entered
        third.set()
    assert 2 == limiter.peak


async def test_fixed_mode_ignores_rate_limits() -> None:
    """With adaptive=False the level stays at the limit."""
    limiter = AdaptiveLimiter(4, adaptive=False)
    limiter.rate_limited(0)
    assert 4 == limiter.level
