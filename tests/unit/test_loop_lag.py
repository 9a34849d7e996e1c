"""The loop-lag monitor sees a callback that holds the event loop (a lower bound: never flaky)."""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.engine.loop_lag import LoopLagMonitor


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
