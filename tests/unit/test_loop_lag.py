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
    # The last two are ours (a collection the allocator started in between could come first).
    assert [generation for generation, _ in pauses][-2:] == [0, 2]
    assert all(seconds >= 0 for _, seconds in pauses)
    assert timer._on_gc not in gc.callbacks


def test_a_pause_is_the_time_between_start_and_stop() -> None:
    ticks = iter([10.0, 10.004])
    pauses: list[tuple[int, float]] = []
    timer = GcPauseTimer(lambda generation, seconds: pauses.append((generation, seconds)), clock=lambda: next(ticks))
    timer._on_gc("start", {"generation": 1})
    timer._on_gc("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
    assert pauses == [(1, pytest.approx(0.004))]


def test_the_gc_histogram_matches_prometheus_clients_and_needs_no_lock() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from sidecar.publish.metrics import GcPauseHistogram

    bounds = (0.0005, 0.001, 0.002, 0.005)
    registry = CollectorRegistry()
    ours = GcPauseHistogram(bounds)
    registry.register(ours)
    reference = Histogram("reference_seconds", "", ["generation"], buckets=bounds, registry=registry)
    for generation, seconds in [(0, 0.0001), (0, 0.0005), (0, 0.003), (2, 0.02), (1, 0.001)]:
        ours.observe(generation, seconds)
        reference.labels(generation=str(generation)).observe(seconds)
    ours.observe(7, 1.0)  # no such generation: ignored
    lines = generate_latest(registry).decode().splitlines()
    mine = sorted(line.removeprefix("lease_sidecar_gc_pause_seconds") for line in lines
                  if line.startswith("lease_sidecar_gc_pause_seconds"))
    theirs = sorted(line.removeprefix("reference_seconds") for line in lines
                    if line.startswith("reference_seconds") and "_created" not in line)
    assert theirs and set(theirs) <= set(mine)
    # What a collection during a scrape does: observe between the scrape's steps, without waiting.
    scrape = ours.collect()
    ours.observe(0, 0.0002)
    assert next(scrape).samples
