"""The loop-lag monitor sees a callback that holds the event loop (a lower bound: never flaky)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from sidecar.engine.loop_lag import GcPauseTimer, LoopLagMonitor


async def test_a_blocked_loop_shows_as_lag_at_least_the_block_minus_one_interval() -> None:
    lags: list[float] = []
    monitor = LoopLagMonitor(lags.append, interval_s=0.01)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05)
    time.sleep(0.1)  # noqa: ASYNC251  (holding the loop is the point)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lags and min(lags) >= 0.0
    assert max(lags) >= 0.1 - 0.01


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagMonitor(lambda _: None, interval_s=0)


def test_every_collection_is_timed_with_its_generation() -> None:
    pauses: list[tuple[int, float]] = []
    timer = GcPauseTimer(lambda generation, seconds: pauses.append((generation, seconds)))
    timer.install()
    timer.install()  # twice is once
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        timer.remove()
    gc.collect()
    assert [generation for generation, _ in pauses] == [0, 2]
    assert all(seconds >= 0 for _, seconds in pauses)
    assert timer._on_gc not in gc.callbacks


def test_a_pause_is_the_time_between_start_and_stop() -> None:
    ticks = iter([10.0, 10.004])
    pauses: list[tuple[int, float]] = []
    timer = GcPauseTimer(lambda generation, seconds: pauses.append((generation, seconds)), clock=lambda: next(ticks))
    timer._on_gc("start", {"generation": 1})
    timer._on_gc("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
    assert pauses == [(1, pytest.approx(0.004))]
